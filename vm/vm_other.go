//go:build !linux

package vm

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Launcher is not available on this OS.
type Launcher struct{ sandbox.Launcher }

// New fails: the VM tier needs qemu-system on Linux (bhyve is not done).
func New(opts Options, log *slog.Logger) (*Launcher, error) {
	return nil, fmt.Errorf("vm: isolation \"vm\" runs on Linux only: %w", errdefs.ErrUnsupported)
}

// Accel is never reached: New fails.
func (l *Launcher) Accel(ctx context.Context) (accel, machine string) { return "", "" }

// Kernel is never reached: New fails.
func (l *Launcher) Kernel() string { return "" }

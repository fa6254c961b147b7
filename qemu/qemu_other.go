//go:build !linux && !freebsd

package qemu

import (
	"context"
	"fmt"
	"runtime"

	"github.com/kiln-build/kiln/errdefs"
)

// Detect reports only the native arch: kiln knows no emulator registry on
// this OS.
func Detect(ctx context.Context) (Capabilities, error) {
	return Capabilities{Native: Native(), Handlers: map[string]Handler{}, Shipped: map[string]Handler{}}, ctx.Err()
}

// Register is not supported on this OS.
func Register(ctx context.Context, arch string) error {
	return fmt.Errorf("%w: registering emulators on %s", errdefs.ErrUnsupported, runtime.GOOS)
}

func advice(Capabilities, string) string {
	return "kiln runs foreign architectures only on Linux and FreeBSD"
}

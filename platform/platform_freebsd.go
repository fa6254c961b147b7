package platform

import (
	"context"
	"fmt"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/freebsd"
	"github.com/kiln-build/kiln/sandbox"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	if cfg.Storage.Kind != "zfs" {
		return nil, fmt.Errorf("storage kind %q on FreeBSD: only zfs is supported: %w", cfg.Storage.Kind, sandbox.ErrUnsupported)
	}
	return sandbox.NewZFS(ctx, cfg.Storage.ZFSParent)
}

func openLauncher(ctx context.Context, cfg *config.Host) (sandbox.Launcher, func() error, error) {
	j, err := freebsd.NewJails(freebsd.OptionsFromConfig(cfg))
	if err != nil {
		return nil, nil, err
	}
	return j, nil, nil
}

func prepareRuns(cfg *config.Host) error { return nil }

// runUser is empty: the jail launcher reads [run] user itself (a name for
// jexec -U).
func runUser(cfg *config.Host) string { return "" }

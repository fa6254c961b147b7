package platform

import (
	"context"
	"fmt"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/freebsd"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	if cfg.Storage.Kind != "zfs" {
		return nil, fmt.Errorf("storage kind %q on FreeBSD: only zfs is supported: %w", cfg.Storage.Kind, sandbox.ErrUnsupported)
	}
	return sandbox.NewZFS(cfg.Storage.ZFSParent)
}

func openLauncher(ctx context.Context, cfg *config.Host) (sandbox.Launcher, func() error, error) {
	j, err := freebsd.NewJails(freebsd.OptionsFromConfig(cfg))
	if err != nil {
		return nil, nil, err
	}
	return j, nil, nil
}

// CheckArch refuses an arch this host can neither run natively nor emulate
// through a binmiscctl image activator.
func (h *Host) CheckArch(ctx context.Context, arch string) error {
	caps, err := qemu.Detect(ctx)
	if err != nil {
		return err
	}
	return qemu.Check(ctx, caps, arch, h.Config.Qemu.Register)
}

package platform

import (
	"context"
	"fmt"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	switch cfg.Storage.Kind {
	case "overlay":
		return linux.NewOverlay(cfg.Storage.Root)
	case "btrfs":
		return linux.NewBtrfs(cfg.Storage.Root)
	case "zfs":
		return sandbox.NewZFS(cfg.Storage.ZFSParent)
	}
	return nil, fmt.Errorf("storage kind %q: %w", cfg.Storage.Kind, sandbox.ErrUnsupported)
}

func openLauncher(ctx context.Context, cfg *config.Host) (sandbox.Launcher, func() error, error) {
	c, err := linux.NewContainerd(ctx, linux.ContainerdConfig{
		Address:   cfg.Containerd.Address,
		Namespace: cfg.Containerd.Namespace,
		Runtime:   cfg.Containerd.Runtime,
	})
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}

// CheckArch refuses an arch this host can neither run natively nor emulate
// through a binfmt_misc handler with the F flag.
func (h *Host) CheckArch(ctx context.Context, arch string) error {
	caps, err := qemu.Detect(ctx)
	if err != nil {
		return err
	}
	return qemu.Check(ctx, caps, arch, h.Config.Qemu.Register)
}

package platform

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/sandbox"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	switch cfg.Storage.Kind {
	case "overlay":
		return linux.NewOverlay(cfg.Storage.Root)
	case "btrfs":
		return linux.NewBtrfs(cfg.Storage.Root)
	case "zfs":
		return sandbox.NewZFS(ctx, cfg.Storage.ZFSParent)
	}
	return nil, fmt.Errorf("storage kind %q: %w", cfg.Storage.Kind, sandbox.ErrUnsupported)
}

func openLauncher(ctx context.Context, cfg *config.Host, owner string) (sandbox.Launcher, func() error, error) {
	lc := linux.ContainerdConfig{
		Address:   cfg.Containerd.Address,
		Namespace: cfg.Containerd.Namespace,
		Runtime:   cfg.Containerd.Runtime,
		Owner:     owner,
		DataDir:   cfg.DataDir,
	}
	if cfg.Containerd.SharedShims {
		lc.ShareShimDir = filepath.Join(cfg.DataDir, "shim")
		// More are made as runs need them, once per host: they outlive
		// kiln's processes, so a one-off `kiln exec` does not make a
		// worker's worth.
		lc.ShimGroups = 1
	}
	c, err := linux.NewContainerd(ctx, lc)
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}

// prepareRuns makes the runs directory (the host side of every run's /in
// and /out) a nosuid, nodev mount; it stays for the host's uptime.
func prepareRuns(cfg *config.Host) error {
	return mounts.NoSuidNoDev(cfg.RunsDir())
}

// runUser is [run] user: the launcher runs jobs as it (checked numeric and
// inside the sandbox's id range when the config was read).
func runUser(cfg *config.Host) string { return cfg.Run.User }

func leftovers(ctx context.Context, h *Host) ([]Leftover, error) {
	l, err := h.Launcher(ctx)
	if err != nil {
		return nil, err
	}
	c, ok := l.(*linux.Containerd)
	if !ok {
		return nil, fmt.Errorf("leftovers: launcher %T: %w", l, sandbox.ErrUnsupported)
	}
	all, err := c.AllOwned(ctx)
	if err != nil {
		return nil, err
	}
	var out []Leftover
	for _, o := range all {
		if o.Owner == h.Identity || o.Owner == linux.DefaultOwner || !orphaned(o.Owner, o.DataDir) {
			continue
		}
		kind := "sandbox"
		if o.Anchor {
			kind = "shim anchor"
		}
		out = append(out, Leftover{ID: o.ID, Owner: o.Owner, DataDir: o.DataDir, Kind: kind})
	}
	return out, nil
}

func removeLeftover(ctx context.Context, h *Host, lo Leftover) error {
	l, err := h.Launcher(ctx)
	if err != nil {
		return err
	}
	c, ok := l.(*linux.Containerd)
	if !ok {
		return fmt.Errorf("leftovers: launcher %T: %w", l, sandbox.ErrUnsupported)
	}
	return c.RemoveOwned(ctx, lo.ID)
}

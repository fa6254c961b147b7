package platform

import (
	"context"
	"fmt"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/freebsd"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/zfsstore"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	if cfg.Storage.Kind != "zfs" {
		return nil, fmt.Errorf("storage kind %q on FreeBSD: only zfs is supported: %w", cfg.Storage.Kind, errdefs.ErrUnsupported)
	}
	return zfsstore.New(ctx, cfg.Storage.ZFSParent)
}

// openLauncher opens the jail launcher of this data dir: its jails' names
// carry the identity, and its Reap touches no other owner's.
func openLauncher(ctx context.Context, h *Host) (sandbox.Launcher, func() error, error) {
	opts := freebsd.OptionsFromConfig(h.Config)
	opts.Owner = h.Identity
	j, err := freebsd.NewJails(opts)
	if err != nil {
		return nil, nil, err
	}
	return j, nil, nil
}

func prepareRuns(cfg *config.Host) error { return nil }

// runUser is empty: the jail launcher reads [run] user itself (a name for
// jexec -U).
func runUser(cfg *config.Host) string { return "" }

// leftovers is not done for jails yet: jail names carry the owner's short
// identity but not its data dir.
func leftovers(ctx context.Context, h *Host) ([]Leftover, error) {
	return nil, fmt.Errorf("listing leftovers of other data dirs on FreeBSD: %w", errdefs.ErrUnsupported)
}

func removeLeftover(ctx context.Context, h *Host, l Leftover) error {
	return fmt.Errorf("removing leftovers on FreeBSD: %w", errdefs.ErrUnsupported)
}

func bridgeAvailable(*config.Host) error {
	return fmt.Errorf("jails have no bridge network (none or host only): %w", errdefs.ErrUnsupported)
}

// bridgeNet: jails have no bridge network.
type bridgeNet struct{}

func (*bridgeNet) close() error { return nil }

// vmNetwork: there is no VM tier on FreeBSD (vm.New fails).
func vmNetwork(h *Host) (netcni.Network, error) { return nil, bridgeAvailable(h.Config) }

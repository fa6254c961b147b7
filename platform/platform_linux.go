package platform

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/zfsstore"
)

func openBackend(ctx context.Context, cfg *config.Host) (sandbox.Backend, error) {
	switch cfg.Storage.Kind {
	case "overlay":
		return treestore.NewOverlay(cfg.Storage.Root)
	case "btrfs":
		return treestore.NewBtrfs(cfg.Storage.Root)
	case "zfs":
		return zfsstore.New(ctx, cfg.Storage.ZFSParent)
	}
	return nil, fmt.Errorf("storage kind %q: %w", cfg.Storage.Kind, errdefs.ErrUnsupported)
}

func openLauncher(ctx context.Context, h *Host) (sandbox.Launcher, func() error, error) {
	cfg := h.Config
	lc := linux.ContainerdConfig{
		Address:   cfg.Containerd.Address,
		Namespace: cfg.Containerd.Namespace,
		Runtime:   cfg.Containerd.Runtime,
		Owner:     h.Identity,
		DataDir:   cfg.DataDir,
		// Missing: runc compiles seccomp in every container (logged).
		SandboxInit: sandboxInit(cfg.Containerd.SandboxInit),
	}
	if cfg.Containerd.SharedShims {
		lc.ShareShimDir = filepath.Join(cfg.DataDir, "shim")
		// More are made as runs need them, once per host: they outlive
		// kiln's processes, so a one-off `kiln exec` does not make a
		// worker's worth.
		lc.ShimGroups = 1
	}
	if n, err := h.bridge.get(cfg, h.NetworkPool); err != nil {
		lc.NetworkUnavailable = err
	} else {
		lc.Network = n
	}
	c, err := linux.NewContainerd(ctx, lc)
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}

// sandboxInit is the kiln-sandbox-init to use: configured, else the one
// installed beside this binary, else the one in PATH; "" if none.
func sandboxInit(configured string) string {
	if configured != "" {
		return configured
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), linux.SandboxInitName)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, _ := exec.LookPath(linux.SandboxInitName)
	return p
}

// bridgeNet is the host's bridge networking, opened at the first use by
// either tier with the NetworkPool of that moment.
type bridgeNet struct {
	mu  sync.Mutex
	n   *netcni.CNI
	err error
}

func (b *bridgeNet) get(cfg *config.Host, pool int) (*netcni.CNI, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == nil && b.err == nil {
		b.n, b.err = bridgeNetwork(cfg, pool)
	}
	return b.n, b.err
}

// close tears down the pool, if the network was opened.
func (b *bridgeNet) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return b.n.Close(ctx)
}

// vmNetwork is the VM tier's view of the host's bridge networking, opened
// only when a guest first needs it: the VM tier is opened for the host's
// facts too, before the worker has set NetworkPool.
func vmNetwork(h *Host) (netcni.Network, error) {
	if err := bridgeAvailable(h.Config); err != nil {
		return nil, err
	}
	return lazyBridge{h}, nil
}

// lazyBridge opens h's bridge networking at its first call.
type lazyBridge struct{ h *Host }

func (l lazyBridge) Setup(ctx context.Context, runID string) (netcni.Attachment, error) {
	n, err := l.h.bridge.get(l.h.Config, l.h.NetworkPool)
	if err != nil {
		return netcni.Attachment{}, err
	}
	return n.Setup(ctx, runID)
}

func (l lazyBridge) Teardown(ctx context.Context, runID string) error {
	n, err := l.h.bridge.get(l.h.Config, l.h.NetworkPool)
	if err != nil {
		return err
	}
	return n.Teardown(ctx, runID)
}

func (l lazyBridge) List(ctx context.Context) ([]string, error) {
	n, err := l.h.bridge.get(l.h.Config, l.h.NetworkPool)
	if err != nil {
		return nil, err
	}
	return n.List(ctx)
}

// bridgeNetwork opens the host's bridge networking, or says why there is
// none (plugins or iptables missing).
func bridgeNetwork(cfg *config.Host, pool int) (*netcni.CNI, error) {
	n, err := netcni.New(netcni.Config{
		StateDir:  filepath.Join(cfg.DataDir, "network"),
		PluginDir: cfg.Network.CNIPluginDir,
		Subnet:    cfg.Network.Subnet,
		DNS:       cfg.Network.DNS,
		Deny:      cfg.Network.Deny,
		Pool:      pool,
	})
	if err != nil {
		return nil, err
	}
	if err := n.Available(); err != nil {
		return nil, err
	}
	return n, nil
}

func bridgeAvailable(cfg *config.Host) error {
	_, err := bridgeNetwork(cfg, 0)
	return err
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
		return nil, fmt.Errorf("leftovers: launcher %T: %w", l, errdefs.ErrUnsupported)
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
		kind := KindSandbox
		if o.Anchor {
			kind = KindShimAnchor
		}
		out = append(out, Leftover{ID: o.ID, Owner: o.Owner, DataDir: o.DataDir, Kind: kind})
	}
	// Records of user namespace ranges nothing uses any more (a process
	// that died while deleting its sandbox), whoever's they are: freeing
	// them is always safe.
	stale, err := c.StaleRanges()
	if err != nil {
		return nil, err
	}
	for _, r := range stale {
		out = append(out, Leftover{ID: rangePrefix + strconv.Itoa(r.Range), Owner: r.Owner, Kind: KindIDRange})
	}
	return out, nil
}

// rangePrefix starts the ID of a KindIDRange leftover; the range's number
// follows.
const rangePrefix = "userns/"

func removeLeftover(ctx context.Context, h *Host, lo Leftover) error {
	l, err := h.Launcher(ctx)
	if err != nil {
		return err
	}
	c, ok := l.(*linux.Containerd)
	if !ok {
		return fmt.Errorf("leftovers: launcher %T: %w", l, errdefs.ErrUnsupported)
	}
	if lo.Kind == KindIDRange {
		n, err := strconv.Atoi(strings.TrimPrefix(lo.ID, rangePrefix))
		if err != nil {
			return fmt.Errorf("leftover %q: not a range", lo.ID)
		}
		return c.FreeStaleRange(n)
	}
	return c.RemoveOwned(ctx, lo.ID)
}

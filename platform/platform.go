// Package platform opens what a host has, from its config: the storage
// backend, the launcher (containerd on Linux, jails on FreeBSD), the image
// manager and the arch check. It is where the per-OS packages meet, so that
// the commands and the worker do not each repeat the wiring.
package platform

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/vm"
)

// Host is one opened build host. Safe for concurrent use.
type Host struct {
	Config  *config.Host
	Backend sandbox.Backend
	// Identity is the data dir's identity (see Identity): what the host's
	// sandboxes, clones and shim anchors are owned by.
	Identity string
	// NetworkPool is how many bridge networks to keep made ahead (Linux;
	// the worker keeps one per slot); read when the launcher opens.
	NetworkPool int

	mu       sync.Mutex
	launcher sandbox.Launcher
	closers  []func() error
	vm       *vm.Launcher
	vmErr    error
	// bridge is the bridge networking the container and VM tiers share:
	// one pool, and one lock per run for setup and teardown.
	bridge bridgeNet
}

// Open prepares the host's directories and opens its storage backend. The
// launcher is opened on first use, so image commands work without containerd.
func Open(ctx context.Context, cfg *config.Host) (*Host, error) {
	for _, d := range []string{cfg.DataDir, cfg.RunsDir(), cfg.Storage.Root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", d, err)
		}
	}
	id, err := Identity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	b, err := openBackend(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open %s storage: %w", cfg.Storage.Kind, err)
	}
	return &Host{Config: cfg, Backend: b, Identity: id}, nil
}

// Launcher returns the host's launcher, connecting on first call.
func (h *Host) Launcher(ctx context.Context) (sandbox.Launcher, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.launcher != nil {
		return h.launcher, nil
	}
	l, closer, err := openLauncher(ctx, h)
	if err != nil {
		return nil, err
	}
	h.launcher = l
	if closer != nil {
		h.closers = append(h.closers, closer)
	}
	return l, nil
}

// Images returns the image manager of this host.
func (h *Host) Images() *images.Manager {
	return images.NewManager(h.Backend, filepath.Join(h.Config.DataDir, "images"), images.Options{
		Mirror:      h.Config.Images.DebootstrapMirror,
		FreeBSDDist: h.Config.Images.FreeBSDDist,
	})
}

// Runner returns a sandbox runner on this host for the runs of the server
// whose identity is server ("" for runs of no server: `kiln exec`). Runs go to the
// launcher of their isolation; when the host's default launcher cannot be
// reached but the VM tier is there, VM runs still go and the others fail
// with the reason.
func (h *Host) Runner(ctx context.Context, server string) (*sandbox.Runner, error) {
	l, lerr := h.Launcher(ctx)
	v, verr := h.VM()
	if lerr != nil {
		if verr != nil {
			return nil, lerr
		}
		l = unreachable{lerr}
	}
	tiers := &sandbox.Tiers{Default: l}
	if verr != nil {
		tiers.Unavailable = map[string]error{api.IsolationVM: verr}
	} else {
		tiers.By = map[string]sandbox.Launcher{api.IsolationVM: v}
	}
	if err := prepareRuns(h.Config); err != nil {
		return nil, err
	}
	return &sandbox.Runner{
		Storage:    h.Backend,
		Launcher:   tiers,
		RunsDir:    h.Config.RunsDir(),
		Identity:   h.Identity,
		User:       runUser(h.Config),
		Server:     server,
		ConsoleCap: int64(h.Config.Limits.Console),
		WarmDisk:   int64(h.Config.Limits.Disk),
		ArtifactCap: sandbox.ArtifactCap{
			Files: h.Config.Limits.Artifacts,
			Bytes: int64(h.Config.Limits.ArtifactBytes),
		},
		KillGrace: h.Config.Run.KillGrace.Std(),
		CheckArch: h.CheckArch,
		// Checked by the runner, so that kiln exec and the worker refuse
		// alike, before anything is made.
		AllowHostNetwork: h.Config.Run.AllowHostNetwork,
	}, nil
}

// Networks returns the network modes cfg's host offers besides "none"
// (which every host offers), and why it refuses each other one.
func Networks(cfg *config.Host) (offered []string, refused map[string]string) {
	refused = map[string]string{}
	if err := bridgeAvailable(cfg); err != nil {
		refused[string(sandbox.NetworkBridge)] = err.Error()
	} else {
		offered = append(offered, string(sandbox.NetworkBridge))
	}
	if cfg.Run.AllowHostNetwork {
		offered = append(offered, string(sandbox.NetworkHost))
	} else {
		refused[string(sandbox.NetworkHost)] = "not allowed ([run] allow_host_network = false)"
	}
	return offered, refused
}

// unreachable stands in for a launcher that could not be opened: it
// starts nothing, and has nothing of its own to reap.
type unreachable struct{ err error }

func (u unreachable) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	return nil, u.err
}

func (u unreachable) Reap(ctx context.Context, keep func(string) bool) error { return nil }

// VM returns the host's VM tier, or why it has none (wrapping
// errdefs.ErrUnsupported when qemu, a kernel or busybox is missing).
func (h *Host) VM() (*vm.Launcher, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.vm == nil && h.vmErr == nil {
		c := h.Config.VM
		o := vm.Options{
			Dir:     filepath.Join(h.Config.DataDir, "vm"),
			Qemu:    c.Qemu,
			Kernel:  c.Kernel,
			Modules: c.Modules,
			Busybox: c.Busybox,
			Machine: c.Machine,
			Accel:   c.Accel,
		}
		o.Network, o.NetworkUnavailable = vmNetwork(h)
		h.vm, h.vmErr = vm.New(o, nil)
	}
	return h.vm, h.vmErr
}

// Close releases the launcher connection.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var first error
	for _, c := range h.closers {
		if err := c(); err != nil && first == nil {
			first = err
		}
	}
	h.closers = nil
	if err := h.bridge.close(); err != nil && first == nil {
		first = err
	}
	return first
}

// CheckArch refuses an arch this host can neither run natively nor emulate
// (a binfmt_misc handler with the F flag on Linux, a binmiscctl image
// activator on FreeBSD).
func (h *Host) CheckArch(ctx context.Context, arch string) error {
	// The host's own arch needs no handler, and most runs are native:
	// spare them reading the handler table.
	if a, err := qemu.Normalize(arch); err == nil && a == qemu.Native() {
		return nil
	}
	caps, err := qemu.Detect(ctx)
	if err != nil {
		return err
	}
	return qemu.Check(ctx, caps, arch, h.Config.Qemu.Register)
}

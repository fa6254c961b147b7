package linux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	pkgapparmor "github.com/containerd/containerd/pkg/apparmor"

	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// Labels kiln puts on its containers. Reap, Attach and Running only ever
// look at containers that carry LabelRun and this launcher's LabelOwner.
const (
	// LabelRun is the sandbox's key on the host (sandbox.Runner.Key).
	LabelRun = "kiln.run"
	// LabelOwner is the identity of the data dir whose kiln process made
	// the container (sandboxes and shim anchors).
	LabelOwner = "kiln.owner"
	// LabelServer is the identity of the server the run came from.
	LabelServer = "kiln.server"
	// LabelDataDir is the path of the owner's data dir, so that `kiln host
	// gc` can tell leftovers of a data dir that no longer exists.
	LabelDataDir = "kiln.data-dir"
)

// DefaultOwner is the owner of a launcher opened without one (tests).
const DefaultOwner = "none"

// Defaults for ContainerdConfig's empty fields.
const (
	DefaultContainerdAddress   = "/run/containerd/containerd.sock"
	DefaultContainerdNamespace = "kiln"
	DefaultContainerdRuntime   = "io.containerd.runc.v2"
)

// containerPrefix keeps kiln's container IDs apart from anyone else's in a
// shared namespace.
const containerPrefix = "kiln-"

// cfsPeriod is the CFS period (µs) the CPU quota is expressed against.
const cfsPeriod = 100_000

// ContainerdConfig says how to reach containerd. Empty fields take the
// Default* values.
type ContainerdConfig struct {
	Address   string // unix socket of the daemon
	Namespace string // containerd namespace kiln's containers live in
	Runtime   string // shim runtime; runc (crun fails on cgroup v1 hybrid hosts)
	// ShareShimDir, when set, makes kiln's containers take turns on a few
	// long-lived runc shims (one per live sandbox, reused by the next), each
	// kept alive by an idle anchor container whose root and lock live here.
	ShareShimDir string
	// ShimGroups is how many shared shims to make ready at once (about the
	// number of sandboxes alive at a time); more are made as needed.
	ShimGroups int
	// Owner is the identity of the data dir this launcher works for, and
	// DataDir its path: recorded in labels, and the only containers it
	// ever lists, attaches to or deletes are Owner's. Empty: DefaultOwner.
	Owner   string
	DataDir string
	// Network sets up sandboxes with network "bridge"; nil: such runs
	// are refused.
	Network Network
	// NetworkUnavailable, when set, is why Network is nil (said to a run
	// that asks for bridge).
	NetworkUnavailable error
	// SandboxInit is the path of the kiln-sandbox-init binary: with it, a
	// seccomp profile is compiled once, not by runc in every container
	// (see seccompFilters). Empty or unusable: runc compiles it, logged.
	SandboxInit string
	Logger      *slog.Logger
}

// Network gives "bridge" sandboxes their network namespace (netcni.CNI).
// It keeps its state on disk by run ID, so a process that did not set a
// run's network up (a restarted worker, the reaper) can tear it down.
// Safe for concurrent use; Setup and Teardown of one run are serialised.
type Network interface {
	// Setup makes runID's network namespace, ready for the container to
	// join, and the resolv.conf to mount into it. Idempotent: a run that
	// is set up gets the same Attachment again, a half-made one is torn
	// down and made anew. ctx bounds the setup; when it ends mid-way,
	// what was made is torn down before Setup returns.
	Setup(ctx context.Context, runID string) (netcni.Attachment, error)
	// Teardown removes everything Setup made for runID (interface,
	// address lease, NAT and firewall rules, namespace). Idempotent: a run
	// with nothing set up is success. ctx bounds it; what a failed or
	// cancelled Teardown leaves stays listed for a later one.
	Teardown(ctx context.Context, runID string) error
	// List returns the runs that have network state on this host.
	List(ctx context.Context) ([]string, error)
}

// Containerd is the Linux sandbox.Launcher: each run becomes a runc
// container whose root filesystem is the run's clone, used in place (no
// image, no snapshotter). Safe for concurrent use.
type Containerd struct {
	client  *containerd.Client
	ns      string
	owner   string
	dataDir string
	log     *slog.Logger
	shims   *shimGroups // nil: a shim per container
	net     Network     // nil: no bridge networking
	netErr  error       // why net is nil, if known
	harden  hardening
	filters *seccompFilters // nil: runc compiles each profile
	// filtersErr is why filters is nil.
	filtersErr error
	ranges     idRanges
	nsFiles    *usernsFiles
	layers     *layerMounts
	runsc      string // path of runsc; "" when gVisor is not installed
	// runscBridgeErr says why gVisor cannot run network "bridge" here.
	runscBridgeErr error
}

var _ sandbox.Launcher = (*Containerd)(nil)

// NewContainerd connects to the daemon at cfg.Address. It fails (rather
// than hanging) if the daemon does not answer before ctx is done or within
// 10 seconds, whichever is first.
func NewContainerd(ctx context.Context, cfg ContainerdConfig) (*Containerd, error) {
	if cfg.Address == "" {
		cfg.Address = DefaultContainerdAddress
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultContainerdNamespace
	}
	if cfg.Runtime == "" {
		cfg.Runtime = DefaultContainerdRuntime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Owner == "" {
		cfg.Owner = DefaultOwner
	}
	if err := identifiers.Validate(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("containerd namespace: %v: %w", err, sandbox.ErrInvalid)
	}
	// The client's dialer waits for a missing socket to appear, so say at
	// once that there is none.
	if _, err := os.Stat(strings.TrimPrefix(cfg.Address, "unix://")); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("containerd not reachable: no socket at %s (start containerd, or set [containerd] address in the host config): %w", cfg.Address, err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	// WithDefaultRuntime also spares New its lookup of the namespace's
	// labels, which fails on a fresh daemon where the namespace does not
	// exist yet.
	client, err := containerd.New(cfg.Address,
		containerd.WithDefaultNamespace(cfg.Namespace),
		containerd.WithDefaultRuntime(cfg.Runtime),
		containerd.WithTimeout(timeout))
	if err != nil {
		return nil, fmt.Errorf("containerd not reachable at %s (is it running? start containerd, or set [containerd] address in the host config): %w", cfg.Address, err)
	}
	c := &Containerd{client: client, ns: cfg.Namespace, owner: cfg.Owner, dataDir: cfg.DataDir, log: cfg.Logger, net: cfg.Network, netErr: cfg.NetworkUnavailable,
		harden:  hardening{appArmor: pkgapparmor.HostSupports()},
		ranges:  newIDRanges(UsernsDir, idmapDir, cfg.Address, cfg.Namespace, cfg.Owner),
		nsFiles: &usernsFiles{},
		layers:  &layerMounts{}}
	if err := prepareRunDir(); err != nil {
		client.Close()
		return nil, err
	}
	if !unhardened {
		f, err := newSeccompFilters(cfg.SandboxInit, cfg.Logger)
		if err != nil {
			c.log.Warn("containerd: runc builds the seccomp filter in every container, a few ms of CPU each", "why", err)
			c.filtersErr = err
		}
		c.filters = f
	}
	if p, err := exec.LookPath("runsc"); err == nil {
		bridgeErr, err := writeRunscWrappers(p)
		if err != nil {
			client.Close()
			return nil, err
		}
		c.runsc, c.runscBridgeErr = p, bridgeErr
	}
	if _, err := c.Version(ctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("containerd at %s does not answer (start containerd): %w", cfg.Address, err)
	}
	if cfg.ShareShimDir != "" {
		c.shims = newShimGroups(cfg.ShareShimDir, client, c.labels(map[string]string{LabelShimAnchor: "true"}))
		if err := c.shims.prepare(c.nsCtx(ctx), cfg.ShimGroups); err != nil {
			client.Close()
			return nil, fmt.Errorf("containerd: prepare shared shims: %w", err)
		}
	}
	return c, nil
}

// Close drops the connection. Running sandboxes keep running; their
// Sandbox values stop working.
func (c *Containerd) Close() error {
	c.layers.close()
	c.nsFiles.close()
	return c.client.Close()
}

// Version returns the daemon's version string, e.g. "1.6.20~ds1".
func (c *Containerd) Version(ctx context.Context) (string, error) {
	v, err := c.client.Version(c.nsCtx(ctx))
	if err != nil {
		return "", fmt.Errorf("containerd version: %w", err)
	}
	return v.Version, nil
}

func (c *Containerd) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, c.ns)
}

// Start creates the container "kiln-<RunID>" from spec and starts its init
// process. On error nothing is left behind, except that a container of the
// same ID that already existed (left by a crash) is not touched: Start then
// returns an error wrapping sandbox.ErrExists and the caller reaps first.
func (c *Containerd) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	s, err := c.create(ctx, spec, spec.Console)
	if err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		return nil, errors.Join(err, s.discard(ctx))
	}
	return s, nil
}

// create makes the container and task of spec, its console wired to
// console: runc create is done and the init process waits for start (in
// runc's exec fifo, its args, env, cwd, user and hostname fixed). On error
// nothing is left behind, as for Start.
func (c *Containerd) create(ctx context.Context, spec sandbox.Spec, console io.Writer) (_ *containerdSandbox, retErr error) {
	id := containerPrefix + spec.RunID
	// The clone; the user namespace gives the spec an idmapped copy.
	root := spec.Root
	gvisor := false
	switch spec.Isolation {
	case "", names.IsolationContainer:
	case names.IsolationGVisor:
		if c.runsc == "" {
			return nil, fmt.Errorf("isolation %q: runsc is not installed on this host (apt-get install runsc): %w", spec.Isolation, sandbox.ErrUnsupported)
		}
		if spec.Network.OrNone() == sandbox.NetworkHost {
			// runsc refuses the host's network namespace.
			return nil, fmt.Errorf("isolation %q: network %q: gVisor does not run in the host's network namespace (use \"none\" or \"bridge\"): %w", spec.Isolation, spec.Network.OrNone(), sandbox.ErrUnsupported)
		}
		if spec.Network.OrNone() == sandbox.NetworkBridge && c.runscBridgeErr != nil {
			return nil, fmt.Errorf("isolation %q: network \"bridge\": %w: %w", spec.Isolation, c.runscBridgeErr, sandbox.ErrUnsupported)
		}
		gvisor = true
	default:
		return nil, fmt.Errorf("isolation %q: this launcher offers %s: %w", spec.Isolation, strings.Join(c.Isolations(), ", "), sandbox.ErrUnsupported)
	}
	if _, err := specOpts(spec, nil, c.harden); err != nil {
		return nil, err
	}
	// Cleanup must run even when ctx is what failed.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}
	var att *netcni.Attachment
	// A container of this ID that exists already (a crash's leftover)
	// keeps its network: the caller reaps both.
	existed := false
	if spec.Network.OrNone() == sandbox.NetworkBridge {
		if c.net == nil {
			why := c.netErr
			if why == nil {
				why = errors.New("this launcher has no bridge networking")
			}
			return nil, fmt.Errorf("network \"bridge\": %w: %w", why, sandbox.ErrUnsupported)
		}
		a, err := c.net.Setup(ctx, spec.RunID)
		if err != nil {
			return nil, err
		}
		att = &a
		defer func() {
			if retErr == nil || existed {
				return
			}
			cctx, cancel := cleanupCtx()
			defer cancel()
			if err := c.net.Teardown(cctx, spec.RunID); err != nil {
				c.log.Error("containerd: network cleanup after failed start", "run", spec.RunID, "err", err)
			}
		}()
	}
	ctx = c.nsCtx(ctx)
	labels := c.labels(map[string]string{LabelRun: spec.RunID, LabelServer: spec.Server})
	runtimeOpts := containerd.WithRuntime(c.client.Runtime(), nil)
	release := func() {}
	defer func() {
		if retErr != nil {
			release()
		}
	}()
	var extra []oci.SpecOpts
	// mounted is the user namespace's idmapped copies being made (see
	// userns): waited for before the task is created, or before create
	// gives up.
	var mounted <-chan error
	if gvisor {
		// Its own shim: a shared shim's anchor runs under runc.
		binary := runscNoNetwork
		if att != nil {
			// gVisor's netstack takes over the veth in the run's
			// namespace. No user namespace and no sysfs of kiln's: the
			// sentry has its own /sys. The host writes the namespace's
			// net.* sysctls (IPv6 off) before runsc copies the veth's
			// addresses, so gVisor gets no IPv6 address either.
			if err := notHostNetns(att.NetNS); err != nil {
				return nil, err
			}
			binary = runscSandboxNetwork
			extra = append(extra, withHostNetSysctls)
		}
		runtimeOpts = containerd.WithRuntime(c.client.Runtime(), &options.Options{BinaryName: binary})
	} else if !unhardened {
		mount, undo, settled, err := c.userns(ctx, id, &spec, labels)
		if err != nil {
			return nil, err
		}
		// Once the container exists (or failed to), its record is
		// either backed by it or removed by undo, which never runs
		// before the mounts are done.
		defer func() {
			if mounted != nil {
				// Waited for, not returned: this start failed already.
				if err := <-mounted; err != nil {
					c.log.Debug("containerd: idmapped mounts of a failed start", "container", id, "err", err)
				}
			}
			settled()
		}()
		release = undo
		base := usernsOf(labels)
		sys := "/sys"
		if att != nil {
			// Mounted in the idmap directory, so it goes with the rest.
			sys = filepath.Join(labels[LabelIDMaps], "sys")
			if err := mountNetnsSysfs(att.NetNS, sys); err != nil {
				return nil, err
			}
		}
		extra = append(extra, oci.WithUserNamespace(idMapping(base), idMapping(base)), withSysBind(sys), withHostNetSysctls)
		ch := make(chan error, 1)
		go func() { ch <- mount() }()
		mounted = ch
	}
	opts, err := specOpts(spec, att, c.harden)
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	// kiln-sandbox-init installs the profile (runsc handles its own).
	viaInit := c.filters != nil && !gvisor
	if viaInit {
		// Last of the spec's changes to the profile or the args.
		opts = append(opts, c.filters.opt())
	}
	// On a shared shim, the task is asked of the shim directly (see
	// shimTask), from the spec containerd's record gets.
	var shimAddr, bundle string
	var generated *oci.Spec
	if c.shims != nil && !gvisor {
		group, addr, rel, err := c.shims.acquire(ctx)
		if err != nil {
			return nil, err
		}
		prev := release
		release = func() { rel(); prev() }
		shimAddr, bundle = addr, c.shimBundle(id)
		labels[LabelShimAddress], labels[LabelBundle] = shimAddr, bundle
		opts = append(opts, oci.WithAnnotations(map[string]string{shimGroupAnnotation: group}),
			func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
				generated = s
				return nil
			})
	}
	ctr, err := c.client.NewContainer(ctx, id,
		containerd.WithContainerLabels(labels),
		runtimeOpts,
		containerd.WithNewSpec(opts...))
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			existed = true
			// Not ours: the existing container keeps its range and mounts.
			release = func() {}
			return nil, fmt.Errorf("container %s: %w", id, sandbox.ErrExists)
		}
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	var task sandboxTask
	defer func() {
		if retErr == nil {
			return
		}
		cctx, cancel := cleanupCtx()
		defer cancel()
		if task != nil {
			// Through this task value, so its console fifos are closed.
			if err := task.Delete(cctx, false); err != nil {
				c.log.Error("containerd: cleanup after failed start", "container", id, "err", err)
			}
		}
		if err := deleteContainer(cctx, c.client, ctr, c.undoUserns); err != nil {
			c.log.Error("containerd: cleanup after failed start", "container", id, "err", err)
		}
	}()
	if mounted != nil {
		err := <-mounted
		mounted = nil
		if err != nil {
			return nil, err
		}
	}

	if console == nil {
		console = io.Discard
	}
	if shimAddr != "" {
		st, err := newShimTask(ctx, id, shimAddr, bundle, generated, console)
		if err != nil {
			return nil, err
		}
		task = st
	} else {
		t, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, console, console)))
		if errdefs.IsAlreadyExists(err) {
			// A task of this id outlived its container (left by a kiln
			// older than removeTask); with the container back it can go.
			c.log.Warn("containerd: deleting a stale task left without its container", "container", id)
			if rerr := removeTask(ctx, c.client, id); rerr != nil {
				return nil, fmt.Errorf("create task %s: %w (and %w)", id, err, rerr)
			}
			t, err = ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, console, console)))
		}
		if err != nil {
			return nil, fmt.Errorf("create task %s: %w", id, err)
		}
		task = containerdTask{client: c.client, task: t}
	}
	// The wait outlives create's ctx: it lasts as long as the sandbox. It
	// is set up before the start so that no exit can be missed.
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	statusC, err := task.Wait(life)
	if err != nil {
		stop()
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	sb := &containerdSandbox{c: c, ctr: ctr, labels: labels, task: task, stop: stop, release: release, net: c.net, runID: spec.RunID,
		statusC: statusC, done: make(chan struct{})}
	if viaInit {
		sb.initMountpoint = filepath.Join(root, sandboxInitMount)
	}
	return sb, nil
}

// containerIDs lists every container of the namespace, kiln's or not.
func (c *Containerd) containerIDs(ctx context.Context) (map[string]bool, error) {
	ctrs, err := c.client.Containers(c.nsCtx(ctx))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	ids := make(map[string]bool, len(ctrs))
	for _, ctr := range ctrs {
		ids[ctr.ID()] = true
	}
	return ids, nil
}

// Isolations lists the isolation tiers this launcher offers.
func (c *Containerd) Isolations() []string {
	out := []string{names.IsolationContainer}
	if c.runsc != "" {
		out = append(out, names.IsolationGVisor)
	}
	return out
}

// labels returns extra plus the owner's labels.
func (c *Containerd) labels(extra map[string]string) map[string]string {
	l := map[string]string{LabelOwner: c.owner}
	if c.dataDir != "" {
		l[LabelDataDir] = c.dataDir
	}
	for k, v := range extra {
		if v != "" {
			l[k] = v
		}
	}
	return l
}

// SeccompStatus says how container sandboxes get their seccomp filter
// (`kiln host facts`).
func (c *Containerd) SeccompStatus() string {
	switch {
	case unhardened:
		return "none (a kiln_unhardened test build)"
	case c.filters != nil:
		if err := c.filters.failed(); err != nil {
			return fmt.Sprintf("built by runc in every container for a profile whose probe failed (%v); the others compiled once, installed by %s", err, SandboxInitName)
		}
		return "compiled once per profile, installed by " + SandboxInitName
	default:
		return fmt.Sprintf("built by runc in every container (%v)", c.filtersErr)
	}
}

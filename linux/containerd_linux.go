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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	pkgapparmor "github.com/containerd/containerd/pkg/apparmor"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

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
		if err := c.deleteContainer(cctx, ctr); err != nil {
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
			if rerr := c.removeTask(ctx, id); rerr != nil {
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

// start starts the init process of a created sandbox and follows it.
func (s *containerdSandbox) start(ctx context.Context) error {
	if err := s.task.Start(s.nsCtx(ctx)); err != nil {
		return fmt.Errorf("start task %s: %w", s.ctr.ID(), err)
	}
	go s.watch(s.statusC) //nolint:gosec // G118: the watcher follows the sandbox past Start's ctx, until its init exits
	return nil
}

// discard deletes a sandbox whose start failed or that is no longer
// wanted, with a context of its own: ctx may be what failed.
func (s *containerdSandbox) discard(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return s.Delete(cctx)
}

// userns gives the sandbox of container id a host id range of its own,
// and makes idmapped copies of its root and its writable bind mounts, so
// the files keep their image ownership inside while the sandbox's root is
// an unprivileged host uid. It points spec at the copies and records both
// in labels; undo takes them back.
//
// The copies' paths are known before they are made, so userns returns
// with spec and labels complete and the copies still to make: mount makes
// them, and the caller runs it while containerd records the container,
// which only stores the paths (about 1.5 ms of mounting off a run's start,
// docs/benchmarks.md). Nothing may use the paths before mount has
// returned nil, and undo must not run while mount does; once mount has
// returned, whatever it returned, undo takes back what it made.
//
// The range's record stays held (see idRanges.acquire) until settled is
// called, which the caller does once the container exists or has failed.
func (c *Containerd) userns(ctx context.Context, id string, spec *sandbox.Spec, labels map[string]string) (mount func() error, undo, settled func(), err error) {
	base, hold, err := c.ranges.acquire(ctx, id, c.containerIDs)
	if err != nil {
		return nil, nil, nil, err
	}
	settled = func() { hold.Close() }
	dir := c.ranges.idmapsOf(c.ranges.owner, id)
	undo = func() {
		if err := removeIDMaps(dir); err != nil {
			c.log.Error("containerd: undo idmapped mounts", "container", id, "err", err)
			return
		}
		c.ranges.release(base, id)
	}
	fail := func(err error) (func() error, func(), func(), error) {
		undo()
		settled()
		return nil, nil, nil, err
	}
	if err := os.Mkdir(idmapDir, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
		return fail(fmt.Errorf("idmapped mounts: %w", err))
	}
	if err := sandboxRootDir(dir, base); err != nil {
		return fail(err)
	}
	paths := []string{spec.Root}
	for _, m := range spec.Mounts {
		if !m.ReadOnly {
			paths = append(paths, m.Source)
		}
	}
	overlays, err := overlayMounts(paths)
	if err != nil {
		return fail(err)
	}
	// What mount does, in order: each makes an idmapped copy of a source
	// at a path spec already names.
	var steps []func(userns *os.File, used map[string]bool) error
	root := filepath.Join(dir, "0")
	var works []string // the sandbox overlays' work dirs
	if top := overlays[spec.Root]; top != nil {
		// overlayfs cannot be idmapped itself; see idmapOverlay.
		w, err := sandboxWorkOf(top)
		if err != nil {
			return fail(err)
		}
		works = append(works, w)
		steps = append(steps, func(userns *os.File, used map[string]bool) error {
			if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("idmapped mounts: %w", err)
			}
			return idmapOverlay(top, dir, root, base, userns, c.layers, used)
		})
	} else {
		src := spec.Root
		steps = append(steps, func(userns *os.File, _ map[string]bool) error { return mkIDMap(src, root, userns) })
	}
	spec.Root = root
	spec.Mounts = slices.Clone(spec.Mounts)
	for i, m := range spec.Mounts {
		// Read-only mounts (/in, host tools) stay plain binds: their
		// files show as nobody's inside, and stay readable.
		if m.ReadOnly {
			continue
		}
		if mt := overlays[m.Source]; mt != nil {
			// A run's layer of a cache (sandbox caches): an overlay,
			// which cannot be idmapped itself; remade over idmapped
			// layers like the root, in a directory of its own.
			sub := filepath.Join(dir, "m"+strconv.Itoa(i+1))
			dst := filepath.Join(sub, "root")
			w, err := sandboxWorkOf(mt)
			if err != nil {
				return fail(err)
			}
			works = append(works, w)
			steps = append(steps, func(userns *os.File, used map[string]bool) error {
				// Traversable: runc, as the sandbox's root, must
				// reach dst; dir keeps everyone else out.
				for _, d := range []struct {
					path string
					mode os.FileMode
				}{{sub, 0o711}, {dst, 0o700}} {
					if err := os.Mkdir(d.path, d.mode); err != nil && !errors.Is(err, fs.ErrExist) {
						return fmt.Errorf("idmapped mounts: %w", err)
					}
				}
				return idmapOverlay(mt, sub, dst, base, userns, c.layers, used)
			})
			spec.Mounts[i].Source = dst
			continue
		}
		src, dst := m.Source, filepath.Join(dir, strconv.Itoa(i+1))
		steps = append(steps, func(userns *os.File, _ map[string]bool) error { return mkIDMap(src, dst, userns) })
		spec.Mounts[i].Source = dst
	}
	mount = func() error {
		userns, err := c.nsFiles.get(base)
		if err != nil {
			return err
		}
		defer userns.Close()
		used := map[string]bool{} // lower layers kept for the range's next run
		for _, step := range steps {
			if err := step(userns, used); err != nil {
				return err
			}
		}
		c.layers.keepOnly(base, used)
		return nil
	}
	labels[LabelUserns] = strconv.FormatUint(uint64(base), 10)
	labels[LabelIDMaps] = dir
	if len(works) > 0 {
		labels[LabelSandboxWork] = strings.Join(works, "\n")
	}
	return mount, undo, settled, nil
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

// specOpts turns spec into the OCI spec, starting from containerd's default
// (namespaces, default capability set, RLIMIT_NOFILE 1024, masked paths)
// and ending with the hardening every run gets. att is the run's network
// for a bridge sandbox (nil to only check spec).
func specOpts(spec sandbox.Spec, att *netcni.Attachment, h hardening) ([]oci.SpecOpts, error) {
	if err := identifiers.Validate(containerPrefix + spec.RunID); err != nil {
		return nil, fmt.Errorf("run ID %q: %v: %w", spec.RunID, err, sandbox.ErrInvalid)
	}
	if !filepath.IsAbs(spec.Root) {
		return nil, fmt.Errorf("root %q is not absolute: %w", spec.Root, sandbox.ErrInvalid)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("no command: %w", sandbox.ErrInvalid)
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.RunID
	}
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithDefaultUnixDevices,
		oci.WithRootFSPath(spec.Root),
		oci.WithProcessArgs(spec.Args...),
		withEnv(spec.Env),
		oci.WithProcessCwd(cwd),
		oci.WithHostname(hostname),
	}
	if spec.User != "" {
		uid, gid, err := sandbox.ParseUser(spec.User)
		if err != nil {
			return nil, err
		}
		opts = append(opts, oci.WithUIDGID(uid, gid))
	}
	var mounts []specs.Mount
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return nil, fmt.Errorf("mount %s -> %s: paths must be absolute: %w", m.Source, m.Target, sandbox.ErrInvalid)
		}
		o := []string{"rbind", "rw"}
		if m.ReadOnly {
			// Not recursive: runc 1.1 knows no "rro", and an "rbind,ro"
			// leaves mounts below the source writable. A submount of a
			// host tool's directory is not seen at all.
			o = []string{"bind", "ro"}
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: o})
	}
	opts = append(opts, oci.WithMounts(mounts))
	switch spec.Network.OrNone() {
	case sandbox.NetworkNone:
		// containerd's default: a new network namespace, loopback only.
	case sandbox.NetworkHost:
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace),
			oci.WithHostResolvconf, oci.WithHostHostsFile)
	case sandbox.NetworkBridge:
		if att != nil {
			opts = append(opts, bridgeOpts(*att))
		}
	default:
		return nil, fmt.Errorf("network %q: %w", spec.Network, sandbox.ErrInvalid)
	}
	// Without kiln's own limits the container still lands in its own cgroup
	// (containerd's default path /<namespace>/<id>).
	if m := spec.MemoryBytes; m > 0 {
		// swap = memory: the limit is on memory+swap, so no swapping past it.
		opts = append(opts, oci.WithMemoryLimit(uint64(m)), oci.WithMemorySwap(m))
	}
	if spec.CPUs > 0 {
		opts = append(opts, oci.WithCPUCFS(int64(spec.CPUs*cfsPeriod), cfsPeriod))
	}
	if spec.Pids > 0 {
		opts = append(opts, oci.WithPidsLimit(spec.Pids))
	}
	return append(opts, h.opts(spec.Arch)...), nil
}

// bridgeOpts joins the run's pinned network namespace, mounts its
// resolv.conf read-only, and switches IPv6 off in the namespace: the
// plugins give sandboxes IPv4 only, and an IPv6 link-local address would
// only let a job talk to its link without kiln's firewall rules.
func bridgeOpts(att netcni.Attachment) oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *oci.Spec) error {
		if err := oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: att.NetNS})(ctx, client, c, s); err != nil {
			return err
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: att.ResolvConf, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		s.Linux.Sysctl["net.ipv6.conf.all.disable_ipv6"] = "1"
		s.Linux.Sysctl["net.ipv6.conf.default.disable_ipv6"] = "1"
		return nil
	}
}

// withEnv sets the environment to exactly env: a rootfs without an image
// has no image config to merge with, and Spec.Env is complete.
func withEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Env = append([]string(nil), env...)
		return nil
	}
}

// Attach reconnects to the running container of runID (started by a
// process that has since died) and copies its output to console from now
// on: the shim keeps the console fifos open, so what the job wrote in
// between is waiting there, and a job that filled them was only blocked.
func (c *Containerd) Attach(ctx context.Context, runID string, console io.Writer) (sandbox.Sandbox, error) {
	ctx = c.nsCtx(ctx)
	id := containerPrefix + runID
	ctr, err := c.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("container %s: %w", id, sandbox.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	} else if labels[LabelOwner] != c.owner {
		return nil, fmt.Errorf("container %s belongs to data dir %s %s, not this one (%s): %w",
			id, labels[LabelOwner], labels[LabelDataDir], c.owner, sandbox.ErrNotFound)
	}
	if console == nil {
		console = io.Discard
	}
	var task sandboxTask
	if labels[LabelShimAddress] != "" {
		t, err := attachShimTask(ctx, id, labels, console)
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("%w: %w", err, sandbox.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		task = t
	} else {
		t, err := ctr.Task(ctx, cio.NewAttach(cio.WithStreams(nil, console, console)))
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("task %s: %w", id, sandbox.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("attach to %s: %w", id, err)
		}
		st, err := t.Status(ctx)
		if err != nil || st.Status != containerd.Running {
			if t.IO() != nil {
				t.IO().Cancel()
				t.IO().Close()
			}
			return nil, fmt.Errorf("task %s is %s, not running: %w", id, st.Status, sandbox.ErrNotFound)
		}
		task = containerdTask{client: c.client, task: t}
	}
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	statusC, err := task.Wait(life)
	if err != nil {
		stop()
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	s := &containerdSandbox{c: c, ctr: ctr, labels: labels, task: task, stop: stop, net: c.net, runID: runID, done: make(chan struct{})}
	if _, err := os.Lstat(c.gatePathOf(id)); err == nil {
		// A warm task's gate goes with it.
		s.gate = &gate{path: c.gatePathOf(id)}
	}
	if c.shims != nil {
		if spec, err := ctr.Spec(ctx); err == nil {
			s.release = c.shims.hold(spec.Annotations[shimGroupAnnotation])
		}
	}
	go s.watch(statusC) //nolint:gosec // G118: the watcher follows the sandbox past Start's ctx, until its init exits
	return s, nil
}

// Running returns the keys (LabelRun) of this owner's containers in the
// namespace, whether or not their task is still running (for crash
// recovery).
func (c *Containerd) Running(ctx context.Context) ([]string, error) {
	ctrs, err := c.kilnContainers(c.nsCtx(ctx))
	if err != nil {
		return nil, err
	}
	runs := make([]string, 0, len(ctrs))
	for _, k := range ctrs {
		runs = append(runs, k.run)
	}
	return runs, nil
}

type kilnContainer struct {
	ctr containerd.Container
	run string
}

func (c *Containerd) kilnContainers(ctx context.Context) ([]kilnContainer, error) {
	// By label in containerd's own query, so another owner's containers
	// (hundreds, on a busy host) are never loaded.
	ctrs, err := c.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q", LabelOwner, c.owner, LabelRun))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []kilnContainer
	for _, ctr := range ctrs {
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", ctr.ID(), err)
		}
		// The filter already did this; checked again because deleting
		// someone else's container is the one mistake Reap must not make.
		if run, ok := info.Labels[LabelRun]; ok && run != "" && info.Labels[LabelOwner] == c.owner {
			out = append(out, kilnContainer{ctr: ctr, run: run})
		}
	}
	return out, nil
}

// Reap kills and deletes every container of this owner (labels kiln.owner
// and kiln.run) whose key keep rejects. Other containers, another owner's
// above all, are never touched. Safe to
// call while other runs start: keep decides, and a run being started is one
// the caller keeps. Errors for single containers are collected; Reap goes
// on with the rest.
func (c *Containerd) Reap(ctx context.Context, keep func(runID string) bool) error {
	ctx = c.nsCtx(ctx)
	ctrs, err := c.kilnContainers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range ctrs {
		if keep(k.run) {
			continue
		}
		c.log.Info("containerd: reaping container", "container", k.ctr.ID(), "run", k.run)
		if err := c.deleteContainer(ctx, k.ctr); err != nil {
			errs = append(errs, err)
			continue
		}
		if c.net != nil {
			if err := c.net.Teardown(ctx, k.run); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.net != nil {
		// Networks whose container is gone or was never made (a crash
		// between the two).
		runs, err := c.net.List(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		for _, run := range runs {
			if keep(run) || slices.ContainsFunc(ctrs, func(k kilnContainer) bool { return k.run == run }) {
				continue
			}
			c.log.Info("containerd: reaping network", "run", run)
			if err := c.net.Teardown(ctx, run); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Idmapped mounts of a start that died before its container was made.
	if err := c.reapIDMaps(ctx, keep); err != nil {
		errs = append(errs, err)
	}
	if err := c.reapGates(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reapIDMaps removes this launcher's idmapped mounts whose container does
// not exist and whose run keep rejects (a run being started is kept).
func (c *Containerd) reapIDMaps(ctx context.Context, keep func(runID string) bool) error {
	dead, err := c.deadEntries(ctx, idmapDir)
	if err != nil {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	var errs []error
	for name, id := range dead {
		// A container's own mounts go with it (deleteContainer); keep is
		// asked only about the mounts of starts that made none.
		run, ok := strings.CutPrefix(id, containerPrefix)
		if !ok || keep(run) {
			continue
		}
		c.log.Info("containerd: removing idmapped mounts of a dead start", "run", run)
		if err := removeIDMaps(filepath.Join(idmapDir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deadEntries returns the entries of dir named for a container of this
// launcher ("<owner hash>-<container id>") whose container does not
// exist, as entry name to container id. It asks containerd only when dir
// has such an entry; a missing dir has none.
func (c *Containerd) deadEntries(ctx context.Context, dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := ownerHash(c.ranges.owner) + "-"
	var alive map[string]bool
	dead := map[string]string{}
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		if alive == nil {
			if alive, err = c.containerIDs(ctx); err != nil {
				return nil, err
			}
		}
		if !alive[id] {
			dead[e.Name()] = id
		}
	}
	return dead, nil
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

// deleteContainer is the package's deleteContainer that also undoes the
// container's user namespace (idmapped mounts, id range).
func (c *Containerd) deleteContainer(ctx context.Context, ctr containerd.Container) error {
	return deleteContainer(ctx, c.client, ctr, c.undoUserns)
}

// deleteContainer kills every process of ctr's task, deletes the task,
// calls undo (when not nil) and deletes the container. Whatever no longer
// exists counts as deleted.
func deleteContainer(ctx context.Context, client *containerd.Client, ctr containerd.Container, undo func(context.Context, containerd.Container) error) error {
	labels, err := ctr.Labels(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: %w", ctr.ID(), err)
	}
	if labels[LabelShimAddress] != "" {
		// Its task is the shim's alone; containerd has none to delete.
		if err := deleteShimTask(ctx, ctr.ID(), labels); err != nil {
			return err
		}
		return deleteRecord(ctx, ctr, undo)
	}
	task, err := ctr.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load task %s: %w", ctr.ID(), err)
	default:
		if err := deleteTask(ctx, client, task); err != nil {
			return err
		}
	}
	// Loading the task asks its shim for its state; a shared shim that no
	// longer knows the task answers "not found" while containerd still
	// lists it, and deleting the container then would leave that task
	// (and its bundle) behind for good: the next task of the same id fails
	// with "already exists". Delete it through the task service, which
	// goes by containerd's own list, while the container still exists.
	if err := removeTask(ctx, client, ctr.ID()); err != nil {
		return err
	}
	return deleteRecord(ctx, ctr, undo)
}

// deleteRecord calls undo (when not nil) and deletes ctr, whose task is
// gone.
func deleteRecord(ctx context.Context, ctr containerd.Container, undo func(context.Context, containerd.Container) error) error {
	if undo != nil {
		if err := undo(ctx, ctr); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	if err := ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", ctr.ID(), err)
	}
	return nil
}

// removeTask deletes the task of container id from containerd's task list,
// whatever its shim says; the container must exist. No task is success.
func (c *Containerd) removeTask(ctx context.Context, id string) error {
	return removeTask(ctx, c.client, id)
}

func removeTask(ctx context.Context, client *containerd.Client, id string) error {
	_, err := client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: id})
	if err != nil {
		if err = errdefs.FromGRPC(err); !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task %s: %w", id, err)
		}
	}
	return nil
}

func deleteExitedTask(ctx context.Context, task containerd.Task) error {
	if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", task.ID(), err)
	}
	return nil
}

func deleteTask(ctx context.Context, client *containerd.Client, task containerd.Task) error {
	// WithProcessKill kills all of the task's processes and waits for the
	// init process before the delete.
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err != nil && !errdefs.IsNotFound(err) {
		// runsc cannot signal a container in the "created" state (its
		// start failed, or it never came), and the client refuses to
		// delete a task it could not stop; the shim's own delete ends it.
		if st, serr := task.Status(ctx); serr == nil && st.Status == containerd.Created {
			_, err = client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: task.ID()})
			if task.IO() != nil {
				task.IO().Cancel()
				_ = task.IO().Close()
			}
		}
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", task.ID(), err)
	}
	return nil
}

// containerdSandbox is one started container.
type containerdSandbox struct {
	c      *Containerd
	ctr    containerd.Container
	labels map[string]string // ctr's labels (its id range, its idmapped mounts)
	task   sandboxTask
	stop   context.CancelFunc // ends the task wait
	// release gives the sandbox's shim group back once it is deleted.
	release func()
	net     Network // tears down the run's network, if any, after the container
	runID   string
	// statusC delivers the init's exit; watch reads it once started.
	statusC <-chan containerd.ExitStatus
	// gate is a warm task's gate (see Prepare), closed and removed with it.
	gate *gate
	// initMountpoint is where runc may have made the mountpoint of
	// sandboxInitMount in the root, removed with the sandbox: a root can
	// outlive it (an image's build tree).
	initMountpoint string

	done chan struct{} // closed once exit and err are set
	exit sandbox.Exit
	err  error

	deleteMu sync.Mutex
}

func (s *containerdSandbox) ID() string { return s.ctr.ID() }

func (s *containerdSandbox) nsCtx(ctx context.Context) context.Context {
	return s.c.nsCtx(ctx)
}

// watch records how the init process ended, once all of its output has
// been copied to the console.
func (s *containerdSandbox) watch(statusC <-chan containerd.ExitStatus) {
	defer close(s.done)
	code, _, err := (<-statusC).Result()
	if err != nil {
		// Lost track of the task (daemon gone, sandbox deleted): its
		// output may still be flowing, so do not wait for the copy.
		s.err = fmt.Errorf("wait for %s: %w", s.ctr.ID(), err)
		return
	}
	// The shim closes its end of the fifos once the init process (and with
	// it the whole PID namespace) is gone, so this ends.
	s.task.IO().Wait()
	// The fifos are of no more use; closing here also frees them when the
	// task is deleted through another handle (Reap) rather than Delete.
	_ = s.task.IO().Close()
	s.exit = exitFromCode(code)
	// The cgroup lives until the task is deleted, so its OOM count can
	// still be read; the OOM killer may have picked a child, not the init,
	// and the job's exit code then is whatever its script made of that.
	if code != 0 {
		ctx, cancel := context.WithTimeout(s.nsCtx(context.Background()), 10*time.Second)
		if spec, err := s.ctr.Spec(ctx); err == nil && spec.Linux != nil {
			s.exit.OOMKilled = cgroupEvent(spec.Linux.CgroupsPath, "memory", "oom_kill")
			s.exit.PidsLimited = cgroupEvent(spec.Linux.CgroupsPath, "pids", "max")
		}
		cancel()
	}
}

// cgroupEvent reports whether the counter key of controller's events in
// the cgroup at path (cgroupfs style, as containerd sets it by default:
// /<namespace>/<id>) is above 0: "oom_kill" of memory (memory.events on
// cgroup v2, memory.oom_control on v1), "max" of pids (pids.events, a fork
// refused at the limit).
func cgroupEvent(path, controller, key string) bool {
	if path == "" || strings.Contains(path, ":") { // systemd-style slice:prefix:name
		return false
	}
	files := []string{
		filepath.Join("/sys/fs/cgroup", path, controller+".events"),
		filepath.Join("/sys/fs/cgroup", controller, path, controller+".events"),
	}
	if controller == "memory" {
		files[1] = filepath.Join("/sys/fs/cgroup/memory", path, "memory.oom_control")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok && k == key {
				return v != "0"
			}
		}
	}
	return false
}

// exitFromCode maps the shim's status: runc reports a process killed by
// signal n as 128+n. A process that itself exits with such a code is
// indistinguishable and is reported as signalled too.
func exitFromCode(code uint32) sandbox.Exit {
	e := sandbox.Exit{Code: int(code)}
	if code > 128 && code < 128+65 {
		n := syscall.Signal(code - 128)
		if name := unix.SignalName(n); name != "" {
			e.Signal = name
		} else {
			e.Signal = fmt.Sprintf("SIG%d", int(n))
		}
	}
	return e
}

// Wait blocks until the init process has exited and everything it and its
// children wrote to stdout and stderr has been copied to Spec.Console, so
// the console is complete when Wait returns. A code above 128 is reported
// as killed by signal code-128. Wait may be called any number of times,
// concurrently; ctx only bounds this call.
func (s *containerdSandbox) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-s.done:
		return s.exit, s.err
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
}

// Signal sends sig to the init process only. A process that has already
// exited is not an error.
func (s *containerdSandbox) Signal(ctx context.Context, sig sandbox.Signal) error {
	n := unix.SignalNum(string(sig))
	if n == 0 {
		return fmt.Errorf("signal %q: %w", sig, sandbox.ErrInvalid)
	}
	if s.exited() {
		// runsc fails to signal a stopped sandbox, and the contract
		// says signalling an ended job is no error.
		return nil
	}
	return s.kill(ctx, n, false)
}

// Kill sends SIGKILL to every process of the container. A container whose
// processes are all gone is not an error.
func (s *containerdSandbox) Kill(ctx context.Context) error {
	if s.exited() {
		// The init process was PID 1 of the sandbox's own PID namespace;
		// the kernel killed and reaped every other process in it before
		// the init's exit was reported, so there is nothing to kill, and
		// a `runc kill --all` would cost a process start for nothing.
		return nil
	}
	return s.kill(ctx, unix.SIGKILL, true)
}

// exited reports whether the init process's exit has been seen.
func (s *containerdSandbox) exited() bool {
	select {
	case <-s.done:
		return s.err == nil
	default:
		return false
	}
}

func (s *containerdSandbox) kill(ctx context.Context, sig syscall.Signal, all bool) error {
	err := s.task.Kill(s.nsCtx(ctx), sig, all)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("signal %s to %s: %w", unix.SignalName(sig), s.ctr.ID(), err)
	}
	return nil
}

// Delete kills what is left, deletes the task and the container.
// Idempotent; a sandbox already gone (reaped, deleted) is success.
func (s *containerdSandbox) Delete(ctx context.Context) error {
	s.deleteMu.Lock()
	defer s.deleteMu.Unlock()
	ctx = s.nsCtx(ctx)
	undo := func() error { return s.c.undoUsernsOf(s.ctr.ID(), s.labels) }
	exited := s.exited()
	var undone chan error
	if exited {
		// Every process of the sandbox is gone (see Kill), so its
		// idmapped mounts and id range can go while runc deletes the
		// task: a run's delete waits for the longer of the two, not both.
		undone = make(chan error, 1)
		go func() { undone <- undo() }()
	}
	err := s.task.Delete(ctx, exited)
	if undone != nil {
		err = errors.Join(err, <-undone)
	} else if err == nil {
		err = undo()
	}
	if err != nil {
		return err
	}
	if err := s.ctr.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", s.ctr.ID(), err)
	}
	s.stop()
	if s.release != nil {
		s.release()
	}
	if err := s.gate.remove(); err != nil {
		return err
	}
	if s.initMountpoint != "" {
		// rmdir: an image's own non-empty directory of that name stays.
		if err := unix.Rmdir(s.initMountpoint); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOTDIR) {
			s.c.log.Debug("containerd: remove the init's mountpoint", "path", s.initMountpoint, "err", err)
		}
	}
	if s.net != nil {
		// After the container: its processes no longer use the network.
		return s.net.Teardown(ctx, s.runID)
	}
	return nil
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

// OwnedContainer is one of kiln's containers (a sandbox or a shim anchor)
// of any owner, as `kiln host gc` sees it.
type OwnedContainer struct {
	ID      string
	Owner   string // "" for a container made before owners were recorded
	DataDir string // the owner's data dir, "" if not recorded
	Anchor  bool   // a shim anchor, not a sandbox
}

// AllOwned lists kiln's containers in the namespace of every owner, this
// launcher's included. Only `kiln host gc` needs it: everything else looks
// at this owner's containers alone.
func (c *Containerd) AllOwned(ctx context.Context) ([]OwnedContainer, error) {
	ctx = c.nsCtx(ctx)
	// Several filters are OR'ed.
	ctrs, err := c.client.Containers(ctx, fmt.Sprintf("labels.%q", LabelRun), fmt.Sprintf("labels.%q", LabelShimAnchor))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]OwnedContainer, 0, len(ctrs))
	for _, ctr := range ctrs {
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			if errdefs.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("container %s: %w", ctr.ID(), err)
		}
		_, anchor := info.Labels[LabelShimAnchor]
		out = append(out, OwnedContainer{ID: ctr.ID(), Owner: info.Labels[LabelOwner], DataDir: info.Labels[LabelDataDir], Anchor: anchor})
	}
	return out, nil
}

// RemoveOwned kills and deletes the container id, whoever owns it. Only
// `kiln host gc` calls it, for containers of a data dir that no longer
// exists. A container already gone is success.
func (c *Containerd) RemoveOwned(ctx context.Context, id string) error {
	ctx = c.nsCtx(ctx)
	ctr, err := c.client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if err := c.deleteContainer(ctx, ctr); err != nil {
		return err
	}
	return removeGates(id)
}

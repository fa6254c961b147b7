package linux

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/namespaces"
	pkgapparmor "github.com/containerd/containerd/pkg/apparmor"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/idmap"
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
	Network netcni.Network
	// NetworkUnavailable, when set, is why Network is nil (said to a run
	// that asks for bridge).
	NetworkUnavailable error
	// SandboxInit is the path of the kiln-sandbox-init binary: with it, a
	// seccomp profile is compiled once, not by runc in every container
	// (see seccompFilters). Empty or unusable: runc compiles it, logged.
	SandboxInit string
	Logger      *slog.Logger
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
	net     netcni.Provider
	harden  hardening
	filters *seccompFilters // nil: runc compiles each profile
	// filtersErr is why filters is nil.
	filtersErr error
	ranges     idRanges
	nsFiles    *idmap.Namespaces
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
	// One named logger for the launcher and its parts, so a message does
	// not spell its component.
	cfg.Logger = cfg.Logger.With("component", "containerd")
	if cfg.Owner == "" {
		cfg.Owner = DefaultOwner
	}
	if err := identifiers.Validate(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("containerd namespace: %v: %w", err, errdefs.ErrInvalid)
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
	c := &Containerd{client: client, ns: cfg.Namespace, owner: cfg.Owner, dataDir: cfg.DataDir, log: cfg.Logger, net: netcni.NewProvider(cfg.Network, cfg.NetworkUnavailable),
		harden:  hardening{appArmor: pkgapparmor.HostSupports()},
		ranges:  newIDRanges(UsernsDir, idmapDir, cfg.Address, cfg.Namespace, cfg.Owner),
		nsFiles: &idmap.Namespaces{},
		layers:  &layerMounts{}}
	if err := prepareRunDir(); err != nil {
		client.Close()
		return nil, err
	}
	if !unhardened {
		f, err := newSeccompFilters(cfg.SandboxInit, cfg.Logger)
		if err != nil {
			c.log.Warn("runc builds the seccomp filter in every container, a few ms of CPU each", "why", err)
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
	c.nsFiles.Close()
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
// returns an error wrapping errdefs.ErrExists and the caller reaps first.
func (c *Containerd) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	s, err := c.create(ctx, spec, spec.Console)
	if err != nil {
		return nil, err
	}
	// runc 1.1 ignores the spec's domainname, and a sandbox in a user
	// namespace cannot write the sysctl: set it from here, as for the
	// hostname of a warm task. gVisor's kernel has a UTS of its own.
	if spec.Domain != "" && cmp.Or(spec.Isolation, names.IsolationContainer) == names.IsolationContainer {
		if err := setUTS(s.task.Pid(), unix.Setdomainname, spec.Domain); err != nil {
			return nil, errors.Join(fmt.Errorf("sandbox %s: domain: %w", spec.RunID, err), s.discard(ctx))
		}
	}
	if err := s.start(ctx); err != nil {
		return nil, errors.Join(err, s.discard(ctx))
	}
	return s, nil
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

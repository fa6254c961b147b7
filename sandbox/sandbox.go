// Package sandbox is the host-side core of kiln: it turns an image snapshot
// into a per-run clone, the clone into a running sandbox, and always tears
// both down again. It knows nothing of the server; the worker and `kiln exec`
// drive it.
//
// The backend-shaped interfaces are Storage and ImageStore (where clones and
// image snapshots live: overlay, btrfs, ZFS; Backend is both) and Launcher,
// with its optional Attacher (what turns a clone into a running sandbox:
// containerd on Linux, jail(8) on FreeBSD), which hands out Sandboxes.
package sandbox

import (
	"context"
	"io"
	"time"

	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/units"
)

// Clone is a writable per-run copy of an image snapshot.
type Clone struct {
	RunID    string // the run that owns the clone
	Snapshot string // "image@version" it was made from
	Root     string // host path of the mounted, writable root filesystem
	// Scratch, when set, is a host directory on the filesystem that
	// bounds the clone's disk limit, outside what the run sees, for what
	// else the run writes (its cache layers): it counts against the
	// limit. The clone's Destroy removes it.
	Scratch string
	// ScratchInRoot, when set, is the path in Root (as the run sees it)
	// through which Scratch is reachable too: a run that uses Scratch
	// must have it masked before its job starts, and cannot run where a
	// mask does not hold (a VM, whose guest kernel is the job's).
	ScratchInRoot string
}

// Storage makes per-run writable copies of image snapshots.
//
// Implementations must be safe for concurrent use by several runs of one
// process. Every method honours ctx for the time it waits on external
// commands; a cancelled call may leave work that a later idempotent call
// (or the reaper, via List) finishes or removes.
type Storage interface {
	// Kind names the backend: "overlay", "btrfs", "zfs".
	Kind() string
	// Clone makes a writable copy of snapshot ("image@version") for runID and
	// mounts it at Clone.Root. Idempotent per runID: calling it again for a
	// runID that has a clone returns that clone. Unknown snapshot: errdefs.ErrNotFound.
	Clone(ctx context.Context, snapshot, runID string) (Clone, error)
	// Destroy unmounts and removes the clone of runID. Idempotent: destroying
	// a clone that does not exist returns nil.
	Destroy(ctx context.Context, runID string) error
	// List returns kiln's clones only (never anything else on the host).
	List(ctx context.Context) ([]Clone, error)
}

// DiskLimiter is a Storage that can bound what a clone holds, so that a run
// cannot fill the host's filesystem.
type DiskLimiter interface {
	// CloneLimited is Clone, with the bytes the run may write into the
	// clone (beyond what it shares with its snapshot) bounded to limit:
	// past it, writes fail with ENOSPC. limit must be positive. The limit
	// is set before CloneLimited returns; like Clone it is idempotent per
	// runID (an existing clone is returned as it is).
	CloneLimited(ctx context.Context, snapshot, runID string, limit int64) (Clone, error)
}

// SnapshotInfo describes one read-only snapshot of an image.
type SnapshotInfo struct {
	Image   string
	Version string // sortable: 20261121T120000Z
	Size    int64  // bytes used, best effort (0 if unknown)
	Created time.Time
}

// Ref returns "image@version".
func (s SnapshotInfo) Ref() string { return s.Image + "@" + s.Version }

// Build is a writable tree where a new snapshot of an image is being made.
type Build struct {
	Image string
	ID    string // backend's handle for the build area
	Root  string // host path to write the root filesystem into
}

// ImageStore keeps images as read-only, versioned snapshots. A build is made
// aside and becomes visible atomically at Commit, so a failed or killed build
// never shows up in Snapshots or Images.
//
// Safe for concurrent use; concurrent builds of one image are allowed (each
// gets its own area) and whoever commits a version first wins; the second
// Commit of the same version returns errdefs.ErrExists.
type ImageStore interface {
	// Begin opens a build area for image. With parent == "" the area is an
	// empty directory; otherwise it starts as a writable copy of the snapshot
	// "image@parent" (errdefs.ErrNotFound if it does not exist).
	Begin(ctx context.Context, image, parent string) (Build, error)
	// Commit turns the build into the read-only snapshot image@version.
	Commit(ctx context.Context, b Build, version string) (SnapshotInfo, error)
	// Abort removes a build area. Idempotent.
	Abort(ctx context.Context, b Build) error
	// Images lists image names that have at least one committed snapshot.
	Images(ctx context.Context) ([]string, error)
	// Snapshots lists the committed snapshots of image, oldest first.
	// errdefs.ErrNotFound if the image has none.
	Snapshots(ctx context.Context, image string) ([]SnapshotInfo, error)
	// DeleteSnapshot removes image@version. errdefs.ErrBusy if a clone still
	// depends on it (the caller decides whether to destroy clones first).
	// Idempotent for a snapshot that does not exist.
	DeleteSnapshot(ctx context.Context, image, version string) error
	// Leftovers removes build areas that no live process is using (after a
	// crash or kill -9 of a build). Idempotent.
	Leftovers(ctx context.Context) error
}

// Backend is what a host's storage is: both clone maker and image store.
type Backend interface {
	Storage
	ImageStore
}

// Resources bounds a sandbox. Zero means "no limit set by kiln".
type Resources struct {
	MemoryBytes int64
	CPUs        float64
	Pids        int64
	Network     NetworkMode // "": NetworkNone
	// DiskBytes bounds what the run writes into its clone (its /work and
	// /out are in the clone): past it writes fail with ENOSPC. It needs a
	// Storage that is a DiskLimiter.
	DiskBytes int64
}

// NetworkMode is what network a sandbox gets (api.Network* name the same).
type NetworkMode string

const (
	// NetworkNone: a network namespace of its own with loopback only.
	NetworkNone NetworkMode = "none"
	// NetworkBridge: a private network namespace with a route out through
	// the host (NAT) and the host's DNS servers; the host's own addresses
	// and other sandboxes are unreachable. Linux only.
	NetworkBridge NetworkMode = "bridge"
	// NetworkHost: the host's network namespace (or, for a jail, its
	// addresses). Runners refuse it unless the host allows it.
	NetworkHost NetworkMode = "host"
)

// OrNone returns m, or NetworkNone when m is empty.
func (m NetworkMode) OrNone() NetworkMode {
	if m == "" {
		return NetworkNone
	}
	return m
}

// Mount is a host directory bind-mounted into the sandbox.
type Mount struct {
	Source   string // host path
	Target   string // absolute path inside the sandbox
	ReadOnly bool
}

// Spec is everything a Launcher needs to start one run's sandbox.
type Spec struct {
	// RunID names the sandbox on the host (the container/jail name
	// suffix): the run's key (Runner.Key), unique per host. It is the
	// hostname unless Hostname is set.
	RunID string
	// Server is the identity of the server the run came from, recorded in
	// labels ("" for runs of no server).
	Server   string
	Root     string // the clone's root, from Storage.Clone
	Arch     string // normalised arch of the image (qemu.Normalize)
	Args     []string
	Env      []string // KEY=VALUE, complete (PATH etc. included)
	Cwd      string
	Hostname string // "" is RunID
	// Domain is the NIS domain name ("": the launcher's); CPUSet > 0
	// confines the sandbox to that many of the host's CPUs, which is what
	// it sees (nproc). Reproduce variations: a launcher that cannot give
	// them ignores them (docs/reproducibility.md says which can).
	Domain string
	CPUSet int
	// NoASLR and Uname26 are personality flags of the main process
	// (ADDR_NO_RANDOMIZE, UNAME26); a launcher that cannot set them says
	// so on Console, when it is a Noter, and starts without them.
	NoASLR, Uname26 bool
	// User is "uid[:gid]" (numeric) the main process runs as; "" is root.
	// The gid defaults to the uid.
	User   string
	Mounts []Mount
	// Isolation is the job's api.Job.Isolation; a Tiers launcher picks
	// the launcher by it, a single launcher ignores it.
	Isolation string
	Resources
	// Console receives stdout and stderr interleaved. The launcher writes to
	// it until the sandbox's init process exits and Wait returns.
	Console io.Writer
}

// Noter is a Console that takes kiln's own notes (a Spool): a launcher
// says through it what of a Spec it could not give.
type Noter interface {
	Notef(format string, a ...any)
}

// Exit is how a sandbox's main process ended.
type Exit struct {
	Code   int    // exit status; 128+signal when killed by a signal
	Signal string // e.g. "SIGKILL" when killed by a signal, else ""
	// OOMKilled: the kernel killed a process of the sandbox for going
	// over its memory limit (best effort: set where the launcher can tell).
	OOMKilled bool
	// PidsLimited: the sandbox tried to make more processes than its pids
	// limit allows (best effort, like OOMKilled).
	PidsLimited bool
}

// Sandbox is one running run.
type Sandbox interface {
	// ID is the backend's name for it (container ID, jail name).
	ID() string
	// Wait blocks until the main process exits or ctx is done (then it
	// returns ctx.Err() and the sandbox keeps running).
	Wait(ctx context.Context) (Exit, error)
	// Signal sends sig (e.g. SIGTERM) to the main process. Signalling a
	// main process that has already exited is not an error.
	Signal(ctx context.Context, sig Signal) error
	// Kill sends SIGKILL to every process in the sandbox. Once Wait has
	// returned an Exit, a nil Kill means no process of the sandbox is left
	// (containerd: the init's PID namespace took them all; jails: jail -r),
	// so the host may read what the sandbox wrote without racing it.
	Kill(ctx context.Context) error
	// Delete removes the sandbox (killing what is left). Idempotent.
	Delete(ctx context.Context) error
}

// Signal is a portable signal name for Sandbox.Signal.
type Signal string

const (
	SIGTERM Signal = "SIGTERM"
	SIGKILL Signal = "SIGKILL"
)

// Attacher is a Launcher that can reconnect to a sandbox that a previous
// process started, after that process crashed or was restarted, so the
// run goes on instead of being lost. Output the job wrote while nobody was
// attached is kept by the backend (up to its buffers; the job then waits).
type Attacher interface {
	// Attach returns the sandbox of runID with its console wired to
	// console. errdefs.ErrNotFound if there is none, or its main process has ended.
	Attach(ctx context.Context, runID string, console io.Writer) (Sandbox, error)
}

// Preparer is a Launcher that can make a sandbox ahead of its run (a warm
// task): created, its main process waiting to be started. What is fixed at
// Prepare (root, args, env, cwd, user, mounts, network, isolation) cannot
// change later; Prepared.Start only sets the rest.
type Preparer interface {
	// Prepare creates the sandbox of spec (Spec.RunID names it, as for
	// Start; Console is ignored) without starting its main process. A spec
	// the launcher cannot prepare (another isolation tier, a network other
	// than none) is refused with errdefs.ErrUnsupported. On error nothing is left.
	Prepare(ctx context.Context, spec Spec) (Prepared, error)
}

// Prepared is a sandbox made by Preparer.Prepare, waiting for its run.
type Prepared interface {
	// Start hands the sandbox to a run: its console goes to a.Console, its
	// limits become a.Resources' memory, CPUs and pids, its hostname
	// a.Hostname (when set), and its main process starts. On error the
	// caller deletes it.
	Start(ctx context.Context, a Adoption) (Sandbox, error)
	// Delete removes the sandbox, started or not. Idempotent.
	Delete(ctx context.Context) error
}

// Adoption is what a run sets on a prepared sandbox when it takes it.
type Adoption struct {
	Hostname string
	Resources
	Console io.Writer
}

// Isolator is a Launcher that says which isolation tiers (names.Isolation*)
// it offers; a Launcher that is not one offers names.IsolationContainer only.
type Isolator interface {
	// Isolations lists the tiers, names.IsolationContainer first.
	Isolations() []string
}

// Isolations lists the isolation tiers l offers.
func Isolations(l Launcher) []string {
	if i, ok := l.(Isolator); ok {
		return i.Isolations()
	}
	return []string{names.IsolationContainer}
}

// Launcher turns a clone into a running sandbox.
//
// Safe for concurrent use. ctx bounds Start itself, not the sandbox's life.
type Launcher interface {
	// Start creates and starts the sandbox described by spec. On error
	// nothing is left running. A sandbox of spec.RunID that is already
	// there (left by a crashed process) is not replaced: Start returns an
	// error wrapping errdefs.ErrExists, and the caller reaps before it retries.
	Start(ctx context.Context, spec Spec) (Sandbox, error)
	// Reap deletes every sandbox of this launcher's owner (the data dir it
	// was opened for) for which keep(runID) returns false. Sandboxes that
	// are not kiln's, or are another owner's, are never touched.
	Reap(ctx context.Context, keep func(runID string) bool) error
}

// ResourcesOf turns a run's limits into the sandbox's resources.
func ResourcesOf(l units.Limits, network NetworkMode) Resources {
	return Resources{
		MemoryBytes: int64(l.Memory),
		CPUs:        l.CPUs,
		Pids:        l.Pids,
		Network:     network,
		DiskBytes:   int64(l.Disk),
	}
}

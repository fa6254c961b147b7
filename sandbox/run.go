package sandbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/units"
)

// Runner drives the lifecycle of runs on one host: clone, sandbox, console,
// timeout, artifacts, and a teardown that always happens.
//
// Safe for concurrent use by several runs.
type Runner struct {
	Storage  Storage
	Launcher Launcher
	// RunsDir holds one directory per live run: lock, in/, console. (/out
	// is a directory of the run's clone.)
	RunsDir string
	// Identity is the identity of the data dir RunsDir is in, and Server
	// the identity of the server whose runs these are ("" for `kiln exec`).
	// On the host a run is known by its key, "<identity>-<server>-<run>"
	// with both identities shortened (see Key): its run directory, clone
	// and sandbox are named by it, so that runs of two data dirs, or of two
	// servers one data dir was enrolled with, never meet. Reap only ever
	// touches keys of Identity. Empty Identity: keys are the bare run IDs
	// (tests, single-identity hosts).
	Identity string
	Server   string
	// ConsoleCap bounds each run's console, kiln's own notes included
	// (they may go a little past it; see Spool).
	ConsoleCap int64
	// ArtifactCap bounds what is collected from a run's /out.
	ArtifactCap ArtifactCap
	// WarmDisk is the disk limit warm clones are made with (the host's
	// default): a run that asks for another limit makes its own clone.
	WarmDisk int64
	// WarmSlots bounds the warm tasks kept per snapshot (Warm): the
	// host's slots, so that runs of one image filling every slot all find
	// one. 0 is 1.
	WarmSlots int
	KillGrace time.Duration
	// User ("uid[:gid]", numeric) is who a run whose Request names no
	// user runs as; "" is the sandbox's root.
	User string
	// CheckArch refuses an arch this host cannot run, before any clone is
	// made. Nil: every arch is accepted.
	CheckArch func(ctx context.Context, arch string) error
	// AllowHostNetwork lets runs ask for NetworkHost; without it they are
	// refused before anything is made ([run] allow_host_network).
	AllowHostNetwork bool
	// Faketime is the host's libfaketime.so.1, which the time variation
	// mounts and preloads; "" is Debian's place for it (HostFaketime).
	Faketime string
	// AsyncTeardown lets Run return as soon as the result and artifacts
	// are in, deleting the sandbox and destroying the clone in the
	// background (the run stays locked until that is done, so the reaper
	// leaves it alone). Forget and Close wait for it.
	AsyncTeardown bool
	// Observe, when set, is told how long each phase of a run took (for
	// the worker's metrics), once per phase that was reached, failed or
	// not. It is called from the run's goroutine (teardown's, with
	// AsyncTeardown) and must not block.
	Observe func(phase Phase, d time.Duration)
	Log     *slog.Logger

	mu       sync.Mutex
	dirs     sync.Mutex
	tearing  map[string]chan struct{} // runs whose async teardown is going on
	teardown sync.WaitGroup
	warm     map[string][]*warmClone  // by snapshot
	warming  map[string]chan struct{} // snapshots whose warm entries are being made, closed when done
	fills    sync.WaitGroup           // fills of the warm pool going on
	closed   bool                     // Close was called: no more warm entries
}

// Phase names a timed step of a run, as Runner.Observe reports it.
type Phase string

// The phases Runner.Observe reports.
const (
	PhaseClone    Phase = "clone"    // a clone of the snapshot made, or a warm one taken
	PhaseStart    Phase = "start"    // the sandbox started
	PhaseCollect  Phase = "collect"  // artifacts collected from /out
	PhaseTeardown Phase = "teardown" // sandbox deleted, clone destroyed or kept warm
)

// observe reports how long phase took since start, if anyone listens.
func (r *Runner) observe(phase Phase, start time.Time) {
	if r.Observe != nil {
		r.Observe(phase, time.Since(start))
	}
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run executes req to the end. Cancelling ctx cancels the run (SIGTERM,
// grace, SIGKILL) and still tears everything down; the Result then has
// Cancelled set. An error means the run could not be carried out (bad
// input, storage or launcher failure, a failed pre hook wrapping
// ErrHookFailed); teardown has happened regardless.
//
// Hooks run on the host in the order pre (clone made, sandbox not yet
// started), post (job ended and artifacts collected; skipped after a
// cancel), cleanup (always, before the clone is destroyed); see Stage.
func (r *Runner) Run(ctx context.Context, req Request) (res Result, err error) {
	key, err := r.admit(ctx, &req)
	if err != nil {
		return res, err
	}
	dir := filepath.Join(r.RunsDir, key)
	r.waitTeardown(key)
	// dirs orders taking a run's lock against Forget removing the run's
	// directory (a late Forget of an earlier attempt of the same run).
	r.dirs.Lock()
	lock, err := acquireRunLock(dir)
	r.dirs.Unlock()
	if err != nil {
		return res, err
	}
	rs := &runState{key: key, dir: dir, lock: lock, log: r.log().With("run", req.RunID),
		hc: hookContext{runID: req.RunID, job: req.Job, workDir: dir}}
	// Whatever happens from here on, even a panic, end tears the run down,
	// in the order it reads.
	defer func() { r.end(ctx, req, rs, &res, &err, recover()) }()

	if !req.Reattach {
		if err := os.RemoveAll(filepath.Join(dir, "in")); err != nil {
			return res, err
		}
		if err := os.MkdirAll(filepath.Join(dir, "in"), 0o755); err != nil {
			return res, err
		}
		if err := placeInputs(filepath.Join(dir, "in"), req.Inputs); err != nil {
			return res, err
		}
	}
	res.ConsolePath = r.ConsolePath(req.RunID)
	if rs.spool, err = openSpool(res.ConsolePath, r.ConsoleCap, req.Console, req.Reattach); err != nil {
		return res, err
	}
	if req.Reattach {
		if err := r.reattach(ctx, req, rs); err != nil {
			return res, err
		}
		res.Started = time.Now()
	} else if err := r.launch(ctx, req, rs, &res); err != nil {
		return res, err
	}
	return r.finish(ctx, req, dir, rs.scratch, rs.sb, rs.spool, &rs.hc, res)
}

// runState is what a run holds between its steps, for its teardown.
type runState struct {
	key, dir string
	lock     *runLock
	log      *slog.Logger
	spool    *Spool
	hc       hookContext
	sb       Sandbox
	warm     *warmClone
	scratch  string // the clone's Clone.Scratch
}

// admit checks req before anything is made (step 1 of doc.go) and returns
// the run's key on this host.
func (r *Runner) admit(ctx context.Context, req *Request) (string, error) {
	if err := validRunID(req.RunID); err != nil {
		return "", err
	}
	if req.User == "" {
		req.User = r.User
	}
	if err := r.CheckIsolation(req.Isolation); err != nil {
		return "", err
	}
	if err := req.Vary.check(); err != nil {
		return "", err
	}
	for _, h := range req.Hooks {
		if err := h.validate(); err != nil {
			return "", err
		}
	}
	if err := r.checkNetwork(req.Network); err != nil {
		return "", err
	}
	if r.CheckArch != nil && req.Arch != "" {
		if err := r.CheckArch(ctx, req.Arch); err != nil {
			return "", err
		}
	}
	key := r.Key(req.RunID)
	if err := validRunID(key); err != nil {
		return "", err
	}
	return key, nil
}

// end is a run's teardown (steps 12-14 of doc.go), top-down: the sandbox
// goes and the cleanup hooks run (their output still reaches the
// console), the console is closed, then the sandbox (if still there) and
// the clone are destroyed and the run unlocked, in the background when
// the run ended well and AsyncTeardown is set. It runs with contexts of
// its own, so a cancelled run still loses its sandbox and clone, and it
// re-panics a panic of the run once everything is torn down.
func (r *Runner) end(ctx context.Context, req Request, rs *runState, res *Result, err *error, panicked any) {
	if rs.spool != nil {
		if hooks := hooksOf(req.Hooks, StageCleanup); len(hooks) > 0 {
			if rs.sb != nil {
				dctx, cancel := cleanup.Context(ctx, cleanup.Kill)
				if rs.sb.Delete(dctx) == nil {
					rs.sb = nil
				}
				cancel()
			}
			res.Checks = append(res.Checks, runStage(context.WithoutCancel(ctx), StageCleanup, hooks, rs.hc, rs.spool)...)
		}
		res.ConsoleTruncated, _ = rs.spool.Truncated()
		_ = rs.spool.Close()
	}
	teardown := func() error {
		defer rs.lock.release()
		tctx, cancel := cleanup.Context(ctx, cleanup.Teardown)
		defer cancel()
		start := time.Now()
		terr := r.teardownRun(tctx, rs.key, rs.sb, rs.warm)
		r.observe(PhaseTeardown, start)
		if terr != nil {
			rs.log.Error("teardown", "err", terr)
		}
		return terr
	}
	if r.AsyncTeardown && panicked == nil && *err == nil {
		r.background(rs.key, teardown)
	} else if terr := teardown(); terr != nil {
		*err = errors.Join(*err, terr)
	}
	if panicked != nil {
		panic(panicked)
	}
}

// reattach takes back the sandbox a previous process started for the run
// (the reattach branch of doc.go). If the sandbox is gone, whatever is
// left of it is reaped and the run fails.
func (r *Runner) reattach(ctx context.Context, req Request, rs *runState) error {
	clone, warm, sandbox, err := r.recordedClone(ctx, rs.dir, rs.key, req)
	rs.warm = warm
	if err != nil {
		return err
	}
	rs.hc.clone, rs.scratch = clone.Root, clone.Scratch
	attacher, ok := r.Launcher.(Attacher)
	if !ok {
		return fmt.Errorf("reattach: launcher cannot attach: %w", errdefs.ErrUnsupported)
	}
	if rs.sb, err = attacher.Attach(ctx, sandbox, rs.spool); err != nil {
		rs.sb = nil
		// Whatever is left of the sandbox (a container record whose
		// task died) must go, or the next attempt cannot start.
		only := func(id string) bool { return id != sandbox }
		return errors.Join(fmt.Errorf("reattach: %w", err), r.Launcher.Reap(context.WithoutCancel(ctx), only))
	}
	rs.spool.Notef("reattached after a restart of the worker")
	return nil
}

// launch makes the run's clone (warm or new), runs the pre hooks and
// starts the sandbox (steps 5-7 of doc.go); res.Started is when the start
// began.
func (r *Runner) launch(ctx context.Context, req Request, rs *runState, res *Result) error {
	var clone Clone
	var err error
	cloneStart := time.Now()
	if r.warmable(req) {
		if rs.warm = r.takeWarm(ctx, req, true); rs.warm != nil {
			r.observe(PhaseClone, cloneStart)
			err := r.launchWarm(ctx, req, rs, res)
			if !errors.Is(err, errWarmGone) {
				if req.Cloned != nil {
					req.Cloned()
				}
				return err
			}
			rs.log.Warn("warm task unusable, starting cold", "err", err)
			cloneStart = time.Now()
		}
	}
	if rs.warm = r.takeWarm(ctx, req, false); rs.warm != nil {
		clone = rs.warm.clone
	} else {
		clone, err = r.clone(ctx, req.Snapshot, rs.key, req.DiskBytes)
	}
	r.observe(PhaseClone, cloneStart)
	if req.Cloned != nil {
		req.Cloned()
	}
	if err != nil {
		return fmt.Errorf("clone %s: %w", req.Snapshot, err)
	}
	cloneID := rs.key
	if rs.warm != nil {
		cloneID = rs.warm.id
	}
	if err := writeRecord(rs.dir, runRecord{Snapshot: req.Snapshot, Clone: cloneID, Sandbox: rs.key}); err != nil {
		return err
	}
	rs.hc.clone, rs.scratch = clone.Root, clone.Scratch
	cwd, err := prepareWork(clone.Root, req)
	if err != nil {
		return err
	}
	uid, gid, _ := ParseUser(req.User) // prepareWork checked it
	notes, err := req.Vary.applyToClone(clone.Root, uid, gid, jobHome(req, cwd))
	if err != nil {
		return fmt.Errorf("variations: %w", err)
	}
	for _, n := range notes {
		rs.spool.Notef("%s", n)
	}
	pre := runStage(ctx, StagePre, req.Hooks, rs.hc, rs.spool)
	res.Checks = append(res.Checks, pre...)
	if n := len(pre); n > 0 && pre[n-1].Failed() {
		return fmt.Errorf("%w: pre hook %s: %s", ErrHookFailed, pre[n-1].Name, pre[n-1].Err)
	}
	spec, err := r.spec(req, rs, clone, cwd)
	if err != nil {
		return err
	}
	res.Started = time.Now()
	sb, err := r.Launcher.Start(ctx, spec)
	r.observe(PhaseStart, res.Started)
	if err != nil {
		return fmt.Errorf("start sandbox: %w", err)
	}
	rs.sb = sb
	rs.log.Debug("started", "sandbox", sb.ID(), "snapshot", req.Snapshot)
	return nil
}

// spec is the sandbox of the run: its clone, its script under kiln's init,
// /in, the host tools it names and its caches.
func (r *Runner) spec(req Request, rs *runState, clone Clone, cwd string) (Spec, error) {
	spec := Spec{
		RunID:     rs.key,
		Server:    r.Server,
		Root:      clone.Root,
		Arch:      req.Arch,
		Args:      []string{"/bin/sh", "-c", initScript, "kiln-init", req.Script, req.Umask},
		Env:       r.env(req, cwd),
		Cwd:       cwd,
		Hostname:  cmp.Or(req.Hostname, req.RunID),
		Domain:    req.Vary.Domain,
		CPUSet:    req.Vary.CPUs,
		NoASLR:    req.Vary.NoASLR,
		Uname26:   req.Vary.Uname26,
		User:      req.User,
		Isolation: req.Isolation,
		Resources: req.Resources,
		Console:   rs.spool,
		// /out is not mounted: it is the clone's own directory, so that
		// what the job leaves there counts against its disk limit.
		Mounts: []Mount{
			{Source: filepath.Join(rs.dir, "in"), Target: "/in", ReadOnly: true},
		},
	}
	if req.Vary.Clock != "" {
		plan, note, err := planClock(clone.Root, cmp.Or(r.Faketime, HostFaketime()), req.Vary.Clock)
		if err != nil {
			return Spec{}, fmt.Errorf("variations: %w", err)
		}
		if note != "" {
			rs.spool.Notef("%s", note)
		} else {
			spec.Env = withClock(spec.Env, plan)
			spec.Mounts = append(spec.Mounts, plan.mount)
		}
	}
	tools := make([]string, 0, len(req.HostTools))
	for n := range req.HostTools {
		tools = append(tools, n)
	}
	sort.Strings(tools)
	for _, n := range tools {
		spec.Mounts = append(spec.Mounts, Mount{Source: req.HostTools[n], Target: path.Join("/host", n), ReadOnly: true})
	}
	if len(req.Caches) > 0 {
		if clone.ScratchInRoot != "" {
			m, err := maskScratch(rs.dir, clone, req.Isolation)
			if err != nil {
				return Spec{}, err
			}
			spec.Mounts = append(spec.Mounts, m)
		}
		layers, err := cacheLayers(rs.dir, clone.Scratch, req.Arch, req.CacheOwner, req.Caches)
		if err != nil {
			return Spec{}, err
		}
		cm, err := mountCaches(rs.dir, clone.Scratch, layers)
		if err != nil {
			return Spec{}, err
		}
		spec.Mounts = append(spec.Mounts, cm...)
	}
	return spec, nil
}

// maskScratch is the mount that hides the clone's scratch (which holds the
// run's cache layers) at its path in the root: an empty directory,
// read-only. Its mountpoint cannot be renamed, removed or replaced from
// inside (EBUSY), nor unmounted by a job without CAP_SYS_ADMIN, so what
// the host merges from the scratch is only what the job wrote through its
// caches' targets. A VM's guest kernel is the job's: there a mask would
// not hold, and the run is refused.
func maskScratch(dir string, clone Clone, isolation string) (Mount, error) {
	if isolation == names.IsolationVM {
		return Mount{}, fmt.Errorf("a run in a VM with a disk limit cannot name a cache on this host's storage: the cache layer would live in the clone (%s), where the guest could reach it; run it without the disk limit, without caches, or in a container: %w", clone.ScratchInRoot, errdefs.ErrUnsupported)
	}
	empty := filepath.Join(dir, "scratch-mask")
	if err := os.Mkdir(empty, 0o555); err != nil && !errors.Is(err, fs.ErrExist) {
		return Mount{}, fmt.Errorf("scratch mask: %w", err)
	}
	return Mount{Source: empty, Target: clone.ScratchInRoot, ReadOnly: true}, nil
}

// checkNetwork refuses a mode this runner does not know or does not allow.
func (r *Runner) checkNetwork(m NetworkMode) error {
	switch m.OrNone() {
	case NetworkNone, NetworkBridge:
		return nil
	case NetworkHost:
		if r.AllowHostNetwork {
			return nil
		}
		return fmt.Errorf("network \"host\" is refused on this host: a job would share the host's network namespace (its admin can allow it with [run] allow_host_network = true in worker.toml): %w", errdefs.ErrUnsupported)
	}
	return fmt.Errorf("network %q: want none, bridge or host: %w", m, errdefs.ErrInvalid)
}

// finish takes a started (or reattached) sandbox to its end: wait with
// timeout and cancel, make sure every process is gone, collect, post hooks.
func (r *Runner) finish(ctx context.Context, req Request, dir, scratch string, sb Sandbox, spool *Spool, hc *hookContext, res Result) (Result, error) {
	var err error
	res.Exit, res.TimedOut, res.Cancelled, err = r.wait(ctx, sb, req.Timeout)
	res.Ended = time.Now()
	if err != nil {
		return res, err
	}
	hc.exit = strconv.Itoa(res.ExitCode())
	if res.Exit.OOMKilled {
		spool.Notef("out of memory: the kernel killed a process of the run at its memory limit of %s ([resources] memory)", units.Size(req.MemoryBytes))
	}
	if res.Exit.PidsLimited {
		spool.Notef("process limit reached: the run could not make more than %d processes ([resources] pids)", req.Pids)
	}
	switch {
	case res.TimedOut:
		spool.Notef("timed out after %s", req.Timeout)
	case res.Cancelled:
		spool.Notef("cancelled")
	}
	// Every process must be gone before /out is read, so nothing can swap
	// a file for a link behind the collector's back (see Sandbox.Kill).
	kctx, cancel := cleanup.Context(ctx, cleanup.Kill)
	kerr := sb.Kill(kctx)
	cancel()
	if kerr != nil {
		return res, fmt.Errorf("kill sandbox: %w", kerr)
	}
	succeeded := !res.TimedOut && !res.Cancelled && res.Exit.Code == 0 && res.Exit.Signal == ""
	layers, err := cacheLayers(dir, scratch, req.Arch, req.CacheOwner, req.Caches)
	if err == nil {
		err = closeCaches(dir, scratch, layers, succeeded, spool.Notef)
	}
	if err != nil {
		// The build itself is done and good; a cache that could not take
		// its files costs the next run a download, not this run.
		spool.Notef("caches: %v", err)
		r.log().Error("caches", "run", req.RunID, "err", err)
	}
	if req.OutDir != "" {
		start := time.Now()
		res.Artifacts, err = Collect(filepath.Join(hc.clone, "out"), req.OutDir, req.Artifacts, r.ArtifactCap, spool.Notef)
		r.observe(PhaseCollect, start)
		if err != nil {
			return res, err
		}
	}
	spool.Notef("%s after %s", res.Describe(), res.Ended.Sub(res.Started).Round(time.Millisecond))
	if !res.Cancelled {
		hc.artifacts = req.OutDir
		res.Checks = append(res.Checks, runStage(ctx, StagePost, req.Hooks, *hc, spool)...)
	}
	return res, nil
}

// wait waits for the exit, enforcing the timeout and honouring cancel.
func (r *Runner) wait(ctx context.Context, sb Sandbox, timeout time.Duration) (exit Exit, timedOut, cancelled bool, err error) {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	waitCtx, stopWait := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWait()
	type waited struct {
		exit Exit
		err  error
	}
	done := make(chan waited, 1)
	go func() {
		e, err := sb.Wait(waitCtx)
		done <- waited{e, err}
	}()
	select {
	case w := <-done:
		return w.exit, false, false, w.err
	case <-deadline:
		timedOut = true
	case <-ctx.Done():
		cancelled = true
	}
	sctx, cancel := cleanup.Context(ctx, cleanup.Step)
	defer cancel()
	_ = sb.Signal(sctx, SIGTERM)
	grace := time.NewTimer(r.killGrace())
	defer grace.Stop()
	select {
	case w := <-done:
		return w.exit, timedOut, cancelled, w.err
	case <-grace.C:
	}
	if err := sb.Kill(sctx); err != nil {
		return exit, timedOut, cancelled, fmt.Errorf("kill sandbox: %w", err)
	}
	select {
	case w := <-done:
		return w.exit, timedOut, cancelled, w.err
	case <-sctx.Done():
		return exit, timedOut, cancelled, fmt.Errorf("sandbox did not exit after SIGKILL: %w", sctx.Err())
	}
}

// CheckIsolation refuses an isolation tier (names.Isolation*; "" is the
// container tier) that this host's launcher does not offer, naming those
// it does.
func (r *Runner) CheckIsolation(tier string) error {
	tier = cmp.Or(tier, names.IsolationContainer)
	if offered := Isolations(r.Launcher); !slices.Contains(offered, tier) {
		return fmt.Errorf("isolation %q: this host offers %s: %w", tier, strings.Join(offered, ", "), errdefs.ErrUnsupported)
	}
	return nil
}

func (r *Runner) killGrace() time.Duration {
	if r.KillGrace > 0 {
		return r.KillGrace
	}
	return 10 * time.Second
}

// jobHome is the job's $HOME.
func jobHome(req Request, cwd string) string {
	home := "/root"
	if uid, _, _ := ParseUser(req.User); uid != 0 {
		// Not root's home: an unprivileged job could not write there.
		home = cwd
	}
	return cmp.Or(req.Vary.Home, home)
}

func (r *Runner) env(req Request, cwd string) []string {
	env := []string{"PATH=" + defaultPath, "HOME=" + jobHome(req, cwd)}
	keys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+req.Env[k])
	}
	return append(env,
		"KILN_RUN="+req.RunID,
		"KILN_JOB="+req.Job,
		"KILN_ATTEMPT="+strconv.Itoa(req.Attempt),
		"KILN_ARCH="+req.Arch,
	)
}

// clone makes the clone of snapshot under key, bounded to disk bytes when
// disk is not zero.
func (r *Runner) clone(ctx context.Context, snapshot, key string, disk int64) (Clone, error) {
	if disk <= 0 {
		return r.Storage.Clone(ctx, snapshot, key)
	}
	dl, ok := r.Storage.(DiskLimiter)
	if !ok {
		return Clone{}, fmt.Errorf("%s storage cannot bound a run's disk: %w", r.Storage.Kind(), errdefs.ErrUnsupported)
	}
	return dl.CloneLimited(ctx, snapshot, key, disk)
}

// initScript is the sandbox's PID 1. The kernel gives PID 1 no default
// signal actions, so a job run as PID 1 would ignore the SIGTERM of a
// timeout or cancel; this shell runs the job as its child and forwards
// TERM/INT/HUP to it, then exits with the job's status.
//
// $2, when not empty, is the umask the job runs with.
const initScript = `trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
[ -z "$2" ] || umask "$2" || exit 125
/bin/sh -c "$1" &
child=$!
while :; do
	wait "$child"; rc=$?
	kill -0 "$child" 2>/dev/null || exit "$rc"
done`

// ShortID is how an identity appears in keys and container names: its
// first 8 hex digits, enough to tell a host's few identities apart.
func ShortID(id string) string { return id[:min(8, len(id))] }

// Key is the host-wide name of runID's run directory, clone and sandbox:
// "<identity>-<server>-<run>" with shortened identities, or
// "<identity>-<run>" for runs of no server; Key("") is the prefix of every
// key of this runner's identity and server.
func (r *Runner) Key(runID string) string {
	if r.Identity == "" {
		return runID
	}
	k := ShortID(r.Identity) + "-"
	if r.Server != "" {
		k += ShortID(r.Server) + "-"
	}
	return k + runID
}

// owns reports whether key is of this runner's data dir (any server).
func (r *Runner) owns(key string) bool {
	return r.Identity == "" || strings.HasPrefix(key, ShortID(r.Identity)+"-")
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

func validRunID(id string) error {
	if id == "" || len(id) > 63 || id[0] == '-' || id[0] == '.' {
		return fmt.Errorf("run id %q: %w", id, errdefs.ErrInvalid)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("run id %q: use a-z, 0-9 and '-': %w", id, errdefs.ErrInvalid)
		}
	}
	return nil
}

// ErrChecksum: a file's content does not match its announced sha256.
var ErrChecksum = errors.New("sha256 mismatch")

// ConsolePath is where the console spool of runID is written while it runs
// and kept until Forget.
func (r *Runner) ConsolePath(runID string) string {
	return filepath.Join(r.RunsDir, r.Key(runID), "console.log")
}

// recordedClone finds the clone a run was started on (its own, or a warm
// one it took) and the name of its sandbox (its key, or the warm task's)
// from what Run wrote in the run's directory, and takes the warm clone's
// lock so the reaper leaves it alone.
func (r *Runner) recordedClone(ctx context.Context, dir, key string, req Request) (Clone, *warmClone, string, error) {
	rec, err := readRecord(dir, key)
	if err != nil {
		return Clone{}, nil, "", fmt.Errorf("reattach: which clone: %w", err)
	}
	snapshot, id, sandbox := rec.Snapshot, rec.Clone, rec.Sandbox
	var warm *warmClone
	if id != key {
		lock, err := acquireRunLock(filepath.Join(r.RunsDir, id))
		if err != nil {
			return Clone{}, nil, "", fmt.Errorf("reattach: clone %s: %w", id, err)
		}
		warm = &warmClone{id: id, lock: lock}
	}
	// Clone is idempotent per id: this finds the existing clone.
	c, err := r.Storage.Clone(ctx, snapshot, id)
	if err != nil {
		return Clone{}, warm, "", fmt.Errorf("reattach: clone %s: %w", id, err)
	}
	if warm != nil {
		warm.clone = c
	}
	return c, warm, sandbox, nil
}

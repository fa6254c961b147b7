package sandbox

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/names"
)

// maxWarm bounds the snapshots that have warm entries at a time.
const maxWarm = 4

// The warm pool holds, per snapshot, clones made ahead of any run. For a
// run that a prepared sandbox can serve (see warmable) the clone comes
// with its sandbox created and its init waiting to be started (a warm
// task); the run then only writes its entry file, sets its limits and
// hostname and starts it. Each entry is locked like a run (under its own
// "warm-" key, which is also its sandbox's name), so the reaper leaves it
// alone while this process lives and removes it, sandbox included, after
// a crash.
type warmClone struct {
	id    string
	clone Clone
	disk  int64 // its disk limit, 0 for none
	lock  *runLock
	made  time.Time
	// task is the clone's prepared sandbox, nil for a clone only; user,
	// arch and res are what it was made with.
	task Prepared
	user string
	arch string
	res  Resources
}

// warmPrefix starts the run ID part of every warm entry's key.
const warmPrefix = "warm-"

// Paths of a warm task, fixed when it is prepared. Its init runs
// warmEntry (under /bin/sh), which the run that takes it writes before it
// starts it; the directory is a read-only bind of <runs>/<warm key>/kiln.
const (
	warmDir   = "/.kiln"
	warmEntry = warmDir + "/entry"
)

// Prewarm makes a ready clone of snapshot (no sandbox) unless one exists.
// Safe to call concurrently with Run; errors only mean there is no warm
// clone.
func (r *Runner) Prewarm(ctx context.Context, snapshot string) error {
	return r.fill(ctx, Request{Snapshot: snapshot, Resources: Resources{DiskBytes: r.WarmDisk}}, false)
}

// Warm readies the warm pool for runs like req (its snapshot, arch, user
// and limits): up to WarmSlots warm tasks when a prepared sandbox can
// serve such a run, else one warm clone. Warm entries of other versions of
// req's image are dropped first: runs of the image now get its new
// version. Safe to call concurrently with Run; errors only mean fewer
// warm entries.
func (r *Runner) Warm(ctx context.Context, req Request) error {
	if req.User == "" {
		req.User = r.User
	}
	return r.fill(ctx, req, r.warmable(req))
}

func (r *Runner) fill(ctx context.Context, req Request, task bool) error {
	snapshot := req.Snapshot
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil
		}
		busy := r.warming[snapshot]
		if busy == nil {
			break
		}
		r.mu.Unlock()
		// One fill per snapshot at a time: a burst of runs ending
		// together would otherwise each make entries, keep some and
		// destroy the rest. The one going on may have been for other
		// runs (clone only, another user), so look again after it.
		select {
		case <-busy:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.warming == nil {
		r.warming = map[string]chan struct{}{}
	}
	done := make(chan struct{})
	r.warming[snapshot] = done
	r.fills.Add(1)
	stale := r.takeStale(snapshot)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.warming, snapshot)
		r.mu.Unlock()
		close(done)
		r.fills.Done()
	}()
	var errs []error
	for _, w := range stale {
		errs = append(errs, r.dropWarm(ctx, w))
	}
	want := 1
	if task {
		want = max(1, r.WarmSlots)
	}
	for {
		r.mu.Lock()
		n := 0
		for _, w := range r.warm[snapshot] {
			if w.serves(req, task) {
				n++
			}
		}
		closed := r.closed
		r.mu.Unlock()
		if n >= want || closed {
			return errors.Join(errs...)
		}
		// Two at a time: runs that follow one another closely drain the
		// pool faster than one refill at a time makes it up, and most of
		// a make is waiting on the kernel and containerd.
		batch := min(want-n, fillParallel)
		made := make([]*warmClone, batch)
		makeErrs := make([]error, batch)
		var wg sync.WaitGroup
		for i := range batch {
			wg.Go(func() { made[i], makeErrs[i] = r.makeWarm(ctx, req, task) })
		}
		wg.Wait()
		for i, w := range made {
			if makeErrs[i] != nil {
				continue
			}
			errs = append(errs, r.addWarm(ctx, snapshot, w))
			if task {
				r.log().Info("warm task ready", "sandbox", w.id, "snapshot", snapshot)
			}
		}
		if err := errors.Join(makeErrs...); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
}

// fillParallel bounds the warm entries a fill makes at once.
const fillParallel = 2

// takeStale removes from the pool and returns the entries of other
// versions of snapshot's image. r.mu is held.
func (r *Runner) takeStale(snapshot string) []*warmClone {
	image, _, _ := strings.Cut(snapshot, "@")
	var stale []*warmClone
	for s, ws := range r.warm {
		if i, _, _ := strings.Cut(s, "@"); i == image && s != snapshot {
			stale = append(stale, ws...)
			delete(r.warm, s)
		}
	}
	return stale
}

// addWarm puts w in the pool, evicting the snapshot whose entries are the
// oldest when there would be more than maxWarm snapshots; w is dropped
// instead when the runner is closed.
func (r *Runner) addWarm(ctx context.Context, snapshot string, w *warmClone) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return r.dropWarm(ctx, w)
	}
	if r.warm == nil {
		r.warm = map[string][]*warmClone{}
	}
	var evict []*warmClone
	if _, ok := r.warm[snapshot]; !ok && len(r.warm) >= maxWarm {
		oldest := ""
		for s, ws := range r.warm {
			if oldest == "" || ws[len(ws)-1].made.Before(r.warm[oldest][len(r.warm[oldest])-1].made) {
				oldest = s
			}
		}
		evict = r.warm[oldest]
		delete(r.warm, oldest)
	}
	r.warm[snapshot] = append(r.warm[snapshot], w)
	r.mu.Unlock()
	var errs []error
	for _, e := range evict {
		errs = append(errs, r.dropWarm(ctx, e))
	}
	return errors.Join(errs...)
}

// makeWarm makes a warm entry for runs like req: a clone, and with task
// its prepared sandbox.
func (r *Runner) makeWarm(ctx context.Context, req Request, task bool) (_ *warmClone, err error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := r.Key(warmPrefix + hex.EncodeToString(b[:]))
	dir := filepath.Join(r.RunsDir, id)
	lock, err := acquireRunLock(dir)
	if err != nil {
		return nil, err
	}
	w := &warmClone{id: id, disk: req.DiskBytes, lock: lock, made: time.Now()}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.dropWarm(context.WithoutCancel(ctx), w))
		}
	}()
	if w.clone, err = r.clone(ctx, req.Snapshot, id, req.DiskBytes); err != nil {
		return w, fmt.Errorf("prewarm %s: %w", req.Snapshot, err)
	}
	if !task {
		return w, os.MkdirAll(filepath.Join(w.clone.Root, "work"), 0o755)
	}
	// /work and /out as a run of the task's user finds them; a run's own
	// working directory below /work is made by its entry.
	if _, err := prepareWork(w.clone.Root, Request{User: req.User}); err != nil {
		return w, err
	}
	for _, d := range []string{"in", "kiln"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return w, err
		}
	}
	res := req.Resources
	res.Network = NetworkNone
	spec := Spec{
		RunID:     id,
		Server:    r.Server,
		Root:      w.clone.Root,
		Arch:      req.Arch,
		Args:      []string{"/bin/sh", warmEntry},
		Env:       []string{"PATH=" + defaultPath},
		Cwd:       "/",
		User:      req.User,
		Isolation: names.IsolationContainer,
		Resources: res,
		Mounts: []Mount{
			{Source: filepath.Join(dir, "in"), Target: "/in", ReadOnly: true},
			{Source: filepath.Join(dir, "kiln"), Target: warmDir, ReadOnly: true},
		},
	}
	if w.task, err = r.Launcher.(Preparer).Prepare(ctx, spec); err != nil {
		return w, fmt.Errorf("prewarm %s: prepare sandbox: %w", req.Snapshot, err)
	}
	w.user, w.arch, w.res = req.User, req.Arch, res
	return w, nil
}

// serves reports whether w can take a run like req: with task, as a warm
// task (same user, arch, disk limit); without, as a clone only.
func (w *warmClone) serves(req Request, task bool) bool {
	if w.disk != req.DiskBytes || (w.task != nil) != task {
		return false
	}
	return !task || (w.user == req.User && w.arch == req.Arch)
}

// shellName is what `export` takes as a variable name.
var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// warmable reports whether a warm task can serve req: the container tier
// with network none (the only sandbox a launcher prepares), no host tools
// or caches (mounts are fixed at create), no pre hook (it works on the
// clone before the start, which must happen before the sandbox has its
// own view of it), environment names the entry can export, and a working
// directory the entry can make (below /work, only as root: the cold path
// hands each of its directories to the job's user). Others take the cold
// path.
func (r *Runner) warmable(req Request) bool {
	if _, ok := r.Launcher.(Preparer); !ok || req.Reattach {
		return false
	}
	if cmp.Or(req.Isolation, names.IsolationContainer) != names.IsolationContainer || req.Network.OrNone() != NetworkNone {
		return false
	}
	if len(req.HostTools) > 0 || len(req.Caches) > 0 || len(hooksOf(req.Hooks, StagePre)) > 0 || req.Vary != (Variations{}) {
		return false
	}
	for k := range req.Env {
		if !shellName.MatchString(k) {
			return false
		}
	}
	if uid, gid, err := ParseUser(req.User); err != nil || (uid != 0 || gid != 0) && req.Cwd != "" && path.Clean(req.Cwd) != "/work" {
		return false
	}
	return true
}

// takeWarm hands a warm entry of req's snapshot to the run: a warm task
// when task, else a clone only. An entry whose clone is gone (destroyed by
// a forced image delete) is dropped.
func (r *Runner) takeWarm(ctx context.Context, req Request, task bool) *warmClone {
	for {
		r.mu.Lock()
		ws := r.warm[req.Snapshot]
		i := slices.IndexFunc(ws, func(w *warmClone) bool { return w.serves(req, task) })
		if i < 0 {
			r.mu.Unlock()
			return nil
		}
		w := ws[i]
		if ws = slices.Delete(ws, i, i+1); len(ws) == 0 {
			delete(r.warm, req.Snapshot)
		} else {
			r.warm[req.Snapshot] = ws
		}
		r.mu.Unlock()
		if _, err := os.Stat(filepath.Join(w.clone.Root, "work")); err == nil {
			return w
		}
		r.log().Warn("warm clone gone, dropped", "clone", w.id, "snapshot", req.Snapshot)
		go func() { _ = r.dropWarm(context.WithoutCancel(ctx), w) }()
	}
}

// launchWarm starts the run on the warm task it took: its /in, its entry
// (environment, working directory, script), then the task's start with
// the run's limits, hostname and console.
func (r *Runner) launchWarm(ctx context.Context, req Request, rs *runState, res *Result) error {
	w := rs.warm
	cwd, err := jobCwd(req)
	if err != nil {
		return err
	}
	if err := writeRecord(rs.dir, runRecord{Snapshot: req.Snapshot, Clone: w.id, Sandbox: w.id}); err != nil {
		return err
	}
	rs.hc.clone = w.clone.Root
	wdir := filepath.Join(r.RunsDir, w.id)
	ents, err := os.ReadDir(filepath.Join(rs.dir, "in"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Rename(filepath.Join(rs.dir, "in", e.Name()), filepath.Join(wdir, "in", e.Name())); err != nil {
			return fmt.Errorf("inputs: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(wdir, "kiln", "entry"), []byte(entryScript(r.env(req, cwd), cwd, req.Script, req.Umask)), 0o644); err != nil {
		return err
	}
	res.Started = time.Now()
	sb, err := w.task.Start(ctx, Adoption{Hostname: cmp.Or(req.Hostname, req.RunID), Resources: req.Resources, Console: rs.spool})
	r.observe(PhaseStart, res.Started)
	if errors.Is(err, errdefs.ErrNotFound) {
		// Its init ended while it waited (killed on the host): nothing of
		// the run ran, so it gives the inputs back and starts cold.
		return r.abandonWarm(ctx, rs, ents, err)
	}
	if err != nil {
		return fmt.Errorf("start warm sandbox: %w", err)
	}
	// The run owns the sandbox now: its teardown deletes it.
	rs.sb, w.task = sb, nil
	rs.log.Debug("started on a warm task", "sandbox", w.id, "snapshot", req.Snapshot)
	// The next run of the image finds one again; off this run's path.
	go func() { _ = r.Warm(context.WithoutCancel(ctx), req) }()
	return nil
}

// errWarmGone: the warm task a run took cannot run it; the run starts cold.
var errWarmGone = errors.New("warm task gone")

// abandonWarm undoes what launchWarm did for a warm task that cannot take
// the run (its inputs moved back, its record removed), drops the task and
// returns errWarmGone wrapping why; on another error the run fails.
func (r *Runner) abandonWarm(ctx context.Context, rs *runState, inputs []os.DirEntry, why error) error {
	w := rs.warm
	rs.warm = nil
	errs := []error{r.returnInputs(w, rs.dir, inputs), removeRecord(rs.dir)}
	errs = append(errs, r.dropWarm(context.WithoutCancel(ctx), w))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("warm task: %w (after %w)", err, why)
	}
	return fmt.Errorf("%w: %w", errWarmGone, why)
}

// returnInputs moves the run's inputs back from w's /in into dir's.
func (r *Runner) returnInputs(w *warmClone, dir string, inputs []os.DirEntry) error {
	for _, e := range inputs {
		if err := os.Rename(filepath.Join(r.RunsDir, w.id, "in", e.Name()), filepath.Join(dir, "in", e.Name())); err != nil {
			return fmt.Errorf("inputs back from warm task: %w", err)
		}
	}
	return nil
}

// entryScript is a warm task's entry: it sets the run's environment
// (replacing the PATH the task was made with) and working directory, then
// execs kiln's init as a cold start runs it, so the job's PID 1 is the same.
func entryScript(env []string, cwd, script, umask string) string {
	var b strings.Builder
	for _, kv := range env {
		b.WriteString("export " + shellQuote(kv) + "\n")
	}
	q := shellQuote(cwd)
	b.WriteString("cd " + q + " 2>/dev/null || { mkdir -p " + q + " && cd " + q + "; } || exit 125\n")
	b.WriteString("exec /bin/sh -c " + shellQuote(initScript) + " kiln-init " + shellQuote(script) + " " + shellQuote(umask) + "\n")
	return b.String()
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// dropWarm deletes w's sandbox (if it still has one), destroys its clone
// and removes its directory.
func (r *Runner) dropWarm(ctx context.Context, w *warmClone) error {
	defer os.RemoveAll(filepath.Join(r.RunsDir, w.id))
	defer w.lock.release()
	var errs []error
	if w.task != nil {
		if err := w.task.Delete(ctx); err != nil {
			errs = append(errs, fmt.Errorf("delete warm sandbox: %w", err))
		}
	}
	return errors.Join(append(errs, r.Storage.Destroy(ctx, w.id))...)
}

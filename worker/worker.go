// Package worker is the host daemon: it leases runs from the server, runs
// each through the sandbox runner, ships the console with byte offsets,
// uploads the artifacts and reports the result with the lease's fencing
// token. It is where the scheduler's API and the sandbox meet.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/runreq"
	"github.com/kiln-build/kiln/sandbox"
)

// Executor runs one request to its end; sandbox.Runner is the real one.
// Run must tear down whatever it made before it returns, and honour ctx as
// cancel. Safe for concurrent use.
type Executor interface {
	Run(ctx context.Context, req sandbox.Request) (sandbox.Result, error)
	// Forget removes what is left of a run on the host. Idempotent.
	Forget(runID string) error
	// ConsolePath is the spool file Run writes the console to.
	ConsolePath(runID string) string
	// Warm readies the warm pool for later runs like req (warm tasks, or a
	// warm clone); an error only means there are fewer.
	Warm(ctx context.Context, req sandbox.Request) error
	// Reap destroys sandboxes and clones of runs no live process holds and
	// keep does not protect.
	Reap(ctx context.Context, keep func(runID string) bool) error
}

// Images resolves the job's image on this host and tells the server what
// images the host has. Safe for concurrent use.
type Images interface {
	runreq.Images
	Facts(ctx context.Context) ([]api.ImageFact, error)
}

// ImageHolder is an Images that can keep the changers of an image (image
// delete, prune, update) out while a run resolves it and makes its clone,
// so that the snapshot cannot go away in between; once the clone exists,
// delete and prune see it and leave the snapshot alone.
type ImageHolder interface {
	// Hold keeps changers of image ref ("name" or "name@version") out
	// until release. It never waits; calling release more than once is
	// harmless.
	Hold(ref string) (release func())
}

// Config is the daemon's wiring and knobs.
type Config struct {
	// Server is the kiln server as this worker reaches it (an
	// *api.Client); the worker retries its calls itself.
	Server   Server
	Exec     Executor
	Images   Images
	BaseFact api.Facts // os, arch, emulated archs, labels; images and slots are filled in
	// HostTools are the tools a job may name; the named ones are mounted
	// read-only at /host/<name>.
	HostTools map[string]string
	// Caches are the host's caches, by name; a job picks from them.
	Caches map[string]cache.Def
	// Hooks are the host's hook definitions by name; a job picks from them
	// (sandbox.SelectHooks) and can never bring a command of its own.
	Hooks map[string]sandbox.Hook
	// Defaults and Max are the host's per-run limits ([limits]); Max is
	// reported in the facts, and a run asking more is refused.
	Defaults, Max api.Limits
	// DiffoscopeMax caps the bytes a diffoscope task downloads;
	// 0: DefaultDiffoscopeMax.
	DiffoscopeMax int64
	// InputCacheMax bounds the input cache (inputcache.go); 0: none.
	InputCacheMax int64
	Slots         int
	// WarmPool keeps warm tasks (a clone with its container created, the
	// init waiting to start) of each recently used snapshot for the next
	// runs of it, one per slot, or a warm clone for runs a warm task
	// cannot serve: at most sandbox's maxWarm (4) snapshots; past that
	// the oldest is dropped.
	WarmPool bool
	// DataDir holds the input cache and the per-run artifact staging.
	DataDir string
	// ServerID is the identity of the server this host enrolled with.
	// Lease records are kept per server, and an assignment from another
	// server is refused (the worker stops: its config points at a server
	// it did not enroll with).
	ServerID string
	// Heartbeat is the interval between heartbeats (default 5s); it must be
	// well below the server's lease TTL.
	Heartbeat    time.Duration
	LeaseWait    time.Duration // long-poll length (default 30s)
	DrainTimeout time.Duration // SIGTERM: wait this long for running jobs
	ReapInterval time.Duration // how often orphans are reaped (default 5m)
	// Retry is how calls to the server that failed for a transient
	// reason are retried (zero: api.WorkerBackoff).
	Retry api.Backoff
	// Signer, when set, signs the provenance of each run that succeeded
	// with artifacts (worker/attest.go); HostName is the name the host
	// enrolled as, the statement's builder.
	Signer   *attest.Signer
	HostName string
	// Metrics, when set, count runs by outcome and lease waits (the phase
	// durations come from the executor; see NewMetrics).
	Metrics *Metrics
	Log     *slog.Logger

	// Fleet keeps the server-held image versions runs are pinned to
	// (Assignment.Image, worker/fleetimage.go); nil refuses such runs.
	Fleet FleetImages
	// FetchStarted, when set, is told when a run has to wait for its
	// image version to be fetched (before the download starts), e.g. to
	// report "fetching image bookworm@3 (212 MiB)" to the server.
	FetchStarted func(runID string, v api.ImageVersion)

	// Builder builds the images of image build runs
	// (Assignment.Job.ImageBuild, worker/imagebuild.go); nil fails them.
	Builder ImageBuilder
}

// ErrHostRemoved: the server refused the host's credential (401): the
// host was removed, or its token revoked. Worker.Run returns it wrapped.
var ErrHostRemoved = errors.New("this host's credential was refused by the server (host removed or token revoked): re-enroll with 'kiln worker enroll'")

// Worker is one host daemon.
type Worker struct {
	cfg    Config
	policy runreq.Policy // of cfg: what a job may have here
	log    *slog.Logger
	srv    Server // cfg.Server behind the retry policy

	// live ends, with ErrHostRemoved as its cause, when the server refuses
	// the host's credential: every run and every shipper stops, and
	// nothing more is sent.
	live       context.Context
	hostGone   context.CancelCauseFunc
	goneLogged sync.Once

	mu   sync.Mutex
	runs map[string]*activeRun

	// fatal stops serving (set by Run); the error is Run's result.
	fatalMu  sync.Mutex
	fatalErr error
	stop     context.CancelFunc

	fleet *fleetFetcher // nil without cfg.Fleet
}

// ErrWrongServer: an assignment came from a server other than the one
// this host enrolled with.
var ErrWrongServer = errors.New("assignment from another server")

type activeRun struct {
	id, fence string
	cancel    context.CancelFunc
	mu        sync.Mutex
	revoked   bool // the lease moved: report nothing
	cancelled bool // the server asked to cancel
}

// New checks cfg and returns a worker.
func New(cfg Config) (*Worker, error) {
	if cfg.Server == nil || cfg.Exec == nil || cfg.Images == nil {
		return nil, errors.New("worker: server, executor and images are required")
	}
	if !api.ValidServerID(cfg.ServerID) {
		// It names lease, staging and run directories that are removed.
		return nil, fmt.Errorf("worker: the server's identity %.80q: want 16 lowercase hex digits (re-enroll with 'kiln worker enroll')", cfg.ServerID)
	}
	if cfg.Slots <= 0 {
		cfg.Slots = 1
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.LeaseWait <= 0 {
		cfg.LeaseWait = 30 * time.Second
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = 5 * time.Minute
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Retry == (api.Backoff{}) {
		cfg.Retry = api.WorkerBackoff
	}
	w := &Worker{cfg: cfg, log: cfg.Log, runs: map[string]*activeRun{},
		policy: runreq.Policy{Hooks: cfg.Hooks, HostTools: cfg.HostTools, Caches: cfg.Caches, Defaults: cfg.Defaults, Max: cfg.Max}}
	w.live, w.hostGone = context.WithCancelCause(context.Background())
	w.srv = retrying{Server: cfg.Server, backoff: cfg.Retry, log: cfg.Log, removed: w.hostRemoved}
	if cfg.Fleet != nil {
		w.fleet = newFleetFetcher(w)
	}
	return w, nil
}

// hostRemoved stops everything the first time the server refuses the
// host's credential: retrying cannot help, and the server has requeued
// the host's runs elsewhere, so they are dropped and not reported.
func (w *Worker) hostRemoved(err error) {
	w.goneLogged.Do(func() {
		w.log.Error("the server refused this host's credential: the host was removed or its token revoked; "+
			"stopping: running jobs are dropped and their consoles are no longer shipped", "err", err)
	})
	w.hostGone(fmt.Errorf("%w: %w", ErrHostRemoved, err))
}

// Run serves until ctx is cancelled (SIGTERM), then drains: it takes no new
// runs, lets the running ones finish for up to DrainTimeout, then cancels
// and reports them. Before serving it reaps every sandbox and clone that
// no live run holds (what a crash of a previous worker left behind). When
// the server refuses the host's credential, Run stops at once and returns
// an error wrapping ErrHostRemoved.
func (w *Worker) Run(ctx context.Context) error {
	ctx, w.stop = context.WithCancel(ctx)
	defer w.stop()
	// Runs a previous worker process held: reattach to those whose
	// sandbox still runs (the rest fail to attach and are torn down; the
	// server requeues them when their lease expires). Records of another
	// server this data dir served before are dropped; the reap below
	// removes what is left of their runs.
	w.dropOtherServers()
	held := w.loadLeases()
	keep := func(runID string) bool { _, ok := held[runID]; return ok }
	if err := w.cfg.Exec.Reap(ctx, keep); err != nil {
		w.log.Warn("reaping leftovers at start", "err", err)
	}
	// Runs outlive ctx (a drain lets them finish) but not the host's
	// credential.
	runCtx, cancelRuns := context.WithCancel(w.live)
	defer cancelRuns()
	leaseCtx, stopLeasing := context.WithCancel(ctx)
	defer stopLeasing()
	context.AfterFunc(w.live, stopLeasing)

	hbCtx, stopHB := context.WithCancel(w.live)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); w.heartbeatLoop(hbCtx) }()
	reapDone := make(chan struct{})
	go func() { defer close(reapDone); w.reapLoop(hbCtx) }()

	var slots sync.WaitGroup
	for _, a := range held {
		slots.Add(1)
		go func() {
			defer slots.Done()
			w.execute(runCtx, a, true)
		}()
	}
	for i := 0; i < w.cfg.Slots; i++ {
		slots.Add(1)
		go func() {
			defer slots.Done()
			w.slotLoop(leaseCtx, runCtx)
		}()
	}
	<-leaseCtx.Done()
	drained := make(chan struct{})
	go func() { slots.Wait(); close(drained) }()
	if w.live.Err() == nil {
		w.log.Info("draining", "running", w.active(), "timeout", w.cfg.DrainTimeout)
		select {
		case <-drained:
		case <-w.live.Done():
		case <-time.After(w.cfg.DrainTimeout):
			w.log.Warn("drain timeout: cancelling running jobs", "running", w.active())
			cancelRuns()
		}
	}
	<-drained
	stopHB()
	<-hbDone
	<-reapDone
	w.fatalMu.Lock()
	defer w.fatalMu.Unlock()
	if w.fatalErr != nil {
		return w.fatalErr
	}
	return context.Cause(w.live)
}

// fatal records err as Run's result and stops serving (a drain).
func (w *Worker) fatal(err error) {
	w.fatalMu.Lock()
	if w.fatalErr == nil {
		w.fatalErr = err
	}
	w.fatalMu.Unlock()
	w.stop()
}

func (w *Worker) active() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.runs)
}

// slotLoop leases and runs one run at a time until ctx ends.
func (w *Worker) slotLoop(ctx, runCtx context.Context) {
	waitStart := time.Now()
	for ctx.Err() == nil {
		facts, err := w.facts(ctx)
		if err != nil {
			w.log.Warn("facts", "err", err)
		}
		// Transient failures are retried inside; what comes back is
		// permanent (or ctx ended).
		a, err := w.srv.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(w.cfg.LeaseWait)})
		received := time.Now()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// The server refuses this host's lease requests as they
			// are (a 403, say): ask again, slowly, as a later request
			// carries other facts and an admin may fix the server.
			w.log.Error("lease refused", "err", err, "retry_in", w.cfg.Retry.Max)
			sleep(ctx, w.cfg.Retry.Max)
		case a == nil:
		case a.ServerID != w.cfg.ServerID:
			// Never run it: its key, lease record and sandbox would be
			// filed under the wrong server. Its lease runs out and the
			// server requeues it.
			w.log.Error("refusing an assignment from another server", "run", a.RunID, "server_id", a.ServerID, "enrolled_with", w.cfg.ServerID)
			w.fatal(fmt.Errorf("%w: the server at the configured URL has id %q, but this host enrolled with %q; run 'kiln worker enroll' with that server, or fix [server] url",
				ErrWrongServer, a.ServerID, w.cfg.ServerID))
			return
		default:
			// CLOCK_REALTIME in ns, the clock a job reads with adjtimex:
			// the queue benchmark's lease-to-first-instruction latency.
			w.log.Debug("lease received", "run", a.RunID, "unix_ns", received.UnixNano())
			w.cfg.Metrics.leased(time.Since(waitStart))
			// Nothing of an assignment is used before it is validated:
			// its run ID names paths below the data dir.
			if err := a.Validate(); err != nil {
				w.cfg.Metrics.ran(outcomeRefused)
				w.refuse(a, err)
			} else if a.Diffoscope != nil {
				w.diffoscope(runCtx, a)
			} else if a.Job.ImageBuild != nil {
				w.imageBuild(runCtx, a)
			} else {
				w.execute(runCtx, a, false)
			}
			waitStart = time.Now()
		}
	}
}

// facts is the host's current picture for the server.
func (w *Worker) facts(ctx context.Context) (api.Facts, error) {
	f := w.cfg.BaseFact
	f.Slots = w.cfg.Slots
	f.Limits = w.cfg.Max
	f.FreeSlots = max(0, w.cfg.Slots-w.active())
	if len(w.cfg.Hooks) > 0 {
		f.Hooks = make(map[string]string, len(w.cfg.Hooks))
		for name, h := range w.cfg.Hooks {
			f.Hooks[name] = string(h.Stage)
		}
	}
	imgs, err := w.cfg.Images.Facts(ctx)
	f.Images = imgs
	if w.cfg.Fleet != nil {
		digests, ferr := w.cfg.Fleet.Digests(ctx)
		f.FleetImages = digests
		err = errors.Join(err, ferr)
	}
	return f, err
}

// reapLoop removes, now and then, what a run that no live process holds
// left behind (a sandbox or clone whose teardown failed, say), so that a
// long-lived host does not fill up between restarts.
func (w *Worker) reapLoop(ctx context.Context) {
	every(ctx, w.cfg.ReapInterval, func() {
		if err := w.cfg.Exec.Reap(ctx, nil); err != nil && ctx.Err() == nil {
			w.log.Warn("periodic reap", "err", err)
		}
	})
}

func (w *Worker) heartbeatLoop(ctx context.Context) {
	every(ctx, w.cfg.Heartbeat, func() { w.heartbeat(ctx) })
}

// every calls f each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}

func (w *Worker) heartbeat(ctx context.Context) {
	facts, _ := w.facts(ctx)
	req := api.HeartbeatRequest{Facts: facts}
	w.mu.Lock()
	for _, r := range w.runs {
		req.Leases = append(req.Leases, api.LeaseRef{RunID: r.id, Fence: r.fence})
	}
	w.mu.Unlock()
	hctx, cancel := context.WithTimeout(ctx, w.cfg.Heartbeat*2)
	defer cancel()
	resp, err := w.srv.Heartbeat(hctx, req)
	if err != nil {
		// The runs go on; the console keeps spooling; a later heartbeat
		// either renews the leases or tells us they moved.
		w.log.Warn("heartbeat", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range resp.Revoked {
		if r, ok := w.runs[id]; ok {
			w.log.Warn("lease revoked: dropping run", "run", id)
			r.mu.Lock()
			r.revoked = true
			r.mu.Unlock()
			r.cancel()
		}
	}
	for _, id := range resp.Cancel {
		if r, ok := w.runs[id]; ok {
			w.log.Info("cancel requested", "run", id)
			r.mu.Lock()
			r.cancelled = true
			r.mu.Unlock()
			r.cancel()
		}
	}
}

// execute carries one validated assignment through: inputs, sandbox,
// console, artifacts, result.
func (w *Worker) execute(ctx context.Context, a *api.Assignment, reattach bool) {
	log := w.log.With("run", a.RunID, "job", a.Job.Name, "attempt", a.Attempt)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ar, untrack := w.track(a, cancel)
	defer untrack()
	defer w.cfg.Metrics.started()()
	if reattach {
		log.Info("reattaching after a restart")
	} else {
		log.Info("leased")
		w.saveLease(a)
	}
	// Once the run is reported or dropped, a restart must not pick it up.
	defer w.removeLease(a.RunID)

	// Per server, like everything of a run on the host; whatever a killed
	// worker left there is of an earlier attempt.
	staging := filepath.Join(w.cfg.DataDir, "artifacts", w.cfg.ServerID+"-"+a.RunID)
	os.RemoveAll(staging)
	defer os.RemoveAll(staging)
	// The sandbox and clone may still be going away in the background;
	// the slot need not wait for that.
	defer func() { go func() { _ = w.cfg.Exec.Forget(a.RunID) }() }()

	ship := newShipper(w.live, w.srv, a.RunID, a.Fence, a.LogOffset, w.cfg.Exec.ConsolePath(a.RunID), log)
	started := time.Now()
	res, snapshot, runErr := w.runOne(runCtx, a, staging, ship, reattach)
	// A failure before the sandbox started never made a spool; tell the
	// server through the log what went wrong.
	if runErr != nil {
		log.Error("run failed", "err", runErr)
	}
	shipCtx, stopShip := context.WithTimeout(w.live, 2*time.Minute)
	ship.finish(shipCtx, runErr)
	stopShip()

	if reattach && runErr != nil {
		// The sandbox did not outlive the restart (or cannot be attached
		// to here): the run is lost, not failed. Its lease runs out and
		// the server requeues it as a new attempt.
		log.Warn("could not reattach; the server requeues the run when its lease expires", "err", runErr)
		w.cfg.Metrics.ran(outcomeLost)
		return
	}
	if w.dropped(ar, ship, log) {
		w.cfg.Metrics.ran(outcomeDropped)
		return
	}
	ar.mu.Lock()
	cancelled := ar.cancelled
	ar.mu.Unlock()
	req := api.ResultRequest{Fence: a.Fence, ExitCode: res.Exit.Code, Signal: res.Exit.Signal, TimedOut: res.TimedOut,
		Checks: apiChecks(res.Checks), Snapshot: snapshot}
	for _, c := range res.FailedChecks() {
		log.Warn("check failed", "hook", c.Name, "stage", c.Stage, "err", c.Err)
	}
	if runErr != nil {
		req.Error = runErr.Error()
		req.ExitCode = -1
	} else if res.Exit.OOMKilled {
		req.Error = res.Describe() // says "out of memory"
	} else if cancelled && req.Signal == "" && req.ExitCode == 0 {
		req.Signal = "SIGTERM"
	}
	upCtx, stopUp := context.WithTimeout(w.live, 6*time.Hour)
	defer stopUp()
	if runErr == nil {
		arts, err := w.upload(upCtx, a, staging, res.Artifacts)
		if errors.Is(err, api.ErrStaleFence) || w.live.Err() != nil {
			if !w.dropped(ar, ship, log) {
				log.Warn("lease moved during upload; result dropped")
			}
			w.cfg.Metrics.ran(outcomeDropped)
			return
		}
		if err != nil {
			req.Error = fmt.Sprintf("artifact upload: %v", err)
			ship.note(upCtx, req.Error)
		}
		req.Artifacts = arts
	}
	req.Attestation = w.attest(upCtx, a, &req, started, log)
	w.report(upCtx, a, req, ship, log)
}

// dropped reports (and logs) that the run's result must not be sent: its
// lease moved to another attempt, or the host was removed.
func (w *Worker) dropped(ar *activeRun, ship *shipper, log *slog.Logger) bool {
	ar.mu.Lock()
	revoked := ar.revoked
	ar.mu.Unlock()
	switch {
	case w.live.Err() != nil:
		log.Warn("host removed; result dropped")
	case revoked || ship.stale():
		log.Warn("lease moved to another attempt; result dropped")
	default:
		return false
	}
	return true
}

// refuse handles an assignment that failed validation: nothing of it is
// used on the host. When its run ID and fence are sound the run is
// reported failed with the reason (in its console too); otherwise it is
// dropped, and its lease expires on the server.
func (w *Worker) refuse(a *api.Assignment, reason error) {
	log := w.log.With("run", fmt.Sprintf("%.80q", a.RunID))
	if !api.ValidRunID(a.RunID) || a.Fence == "" || len(a.Fence) > 128 {
		log.Error("assignment refused and dropped: it cannot even be reported", "err", reason)
		return
	}
	log.Error("assignment refused: reporting it failed", "err", reason)
	rctx, cancel := context.WithTimeout(w.live, 5*time.Minute)
	defer cancel()
	line := fmt.Sprintf("[kiln] the worker refused this assignment: %v\n", reason)
	if _, err := w.srv.AppendLog(rctx, a.RunID, a.Fence, max(a.LogOffset, 0), []byte(line)); err != nil {
		log.Warn("console note", "err", err)
	}
	req := api.ResultRequest{Fence: a.Fence, ExitCode: -1, Error: "the worker refused the assignment: " + reason.Error()}
	if _, err := w.srv.ReportResult(rctx, a.RunID, req); err != nil {
		log.Error("reporting the refusal", "err", err)
	}
}

// track makes the heartbeats renew a's lease and deliver its cancel and
// revoke to cancel until untrack is called.
func (w *Worker) track(a *api.Assignment, cancel context.CancelFunc) (ar *activeRun, untrack func()) {
	ar = &activeRun{id: a.RunID, fence: a.Fence, cancel: cancel}
	w.mu.Lock()
	w.runs[a.RunID] = ar
	w.mu.Unlock()
	return ar, func() {
		w.mu.Lock()
		delete(w.runs, a.RunID)
		w.mu.Unlock()
	}
}

// runOne runs the assignment; it also returns the snapshot the image
// resolved to ("" if it did not).
func (w *Worker) runOne(ctx context.Context, a *api.Assignment, staging string, ship *shipper, reattach bool) (sandbox.Result, string, error) {
	run := runreq.Run{ID: a.RunID, Attempt: a.Attempt, Job: &a.Job, OutDir: staging, Console: ship}
	if reattach {
		req, err := w.policy.Reattach(run)
		if err != nil {
			return sandbox.Result{}, "", err
		}
		res, err := w.cfg.Exec.Run(ctx, req)
		return res, "", err
	}
	image, fetched, err := w.fleetImage(ctx, a)
	if err != nil {
		return sandbox.Result{}, "", err
	}
	if image != a.Job.Image {
		j := a.Job
		j.Image = image
		run.Job = &j
	}
	release := func() {}
	if h, ok := w.cfg.Images.(ImageHolder); ok {
		release = h.Hold(image)
	}
	hold := release
	release = sync.OnceFunc(func() { hold(); fetched() })
	defer release()
	// An old server sends no owner: the runner then refuses caches that
	// are not shared.
	run.CacheOwner, run.Variations, run.Cloned = a.Owner, a.Variations, release
	run.Inputs = func(ctx context.Context) ([]sandbox.InputFile, error) { return w.fetchInputs(ctx, a.InputsWithNeeds()) }
	req, err := w.policy.Request(ctx, w.cfg.Images, run)
	if err != nil {
		return sandbox.Result{}, req.Snapshot, err
	}
	if w.cfg.WarmPool {
		// Ready the pool for the next runs of this image, after this one:
		// not while it starts.
		defer func() { go func() { _ = w.cfg.Exec.Warm(context.WithoutCancel(ctx), req) }() }()
	}
	res, err := w.cfg.Exec.Run(ctx, req)
	return res, req.Snapshot, err
}

// report delivers the result (retried until the server answers). A stale
// fence means another attempt owns the run now, and this one is dropped.
// A result the server refuses as too large (too many or too long artifact
// entries) becomes a failed run without its artifacts, the reason in its
// error and console, so that the run ends instead of being retried.
func (w *Worker) report(ctx context.Context, a *api.Assignment, req api.ResultRequest, ship *shipper, log *slog.Logger) {
	run, err := w.srv.ReportResult(ctx, a.RunID, req)
	if errors.Is(err, api.ErrTooLarge) {
		reason := fmt.Sprintf("the server refused the result as too large (%d artifacts, %d checks): %v",
			len(req.Artifacts), len(req.Checks), err)
		log.Error("result refused; reporting a failed run without its artifacts", "err", err, "artifacts", len(req.Artifacts))
		ship.note(ctx, reason)
		req = api.ResultRequest{Fence: req.Fence, ExitCode: -1, Signal: req.Signal, TimedOut: req.TimedOut,
			Error: reason, Checks: shortChecks(req.Checks), Snapshot: req.Snapshot}
		run, err = w.srv.ReportResult(ctx, a.RunID, req)
	}
	switch {
	case err == nil:
		log.Info("reported", "state", run.State)
		w.cfg.Metrics.ran(run.State)
	case errors.Is(err, api.ErrStaleFence):
		log.Warn("result refused: lease moved; dropped")
		w.cfg.Metrics.ran(outcomeDropped)
	default:
		log.Error("result not reported", "err", err)
		w.cfg.Metrics.ran(outcomeUnreported)
	}
}

// shortChecks keeps the first 64 checks, each error cut to 200 bytes, for
// a result that has to shrink.
func shortChecks(cs []api.Check) []api.Check {
	const maxErr = 200
	out := make([]api.Check, 0, min(len(cs), 64))
	for _, c := range cs[:min(len(cs), 64)] {
		if len(c.Error) > maxErr {
			c.Error = c.Error[:maxErr] + "..."
		}
		out = append(out, c)
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

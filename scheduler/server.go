// Package scheduler is kiln's central queue: jobs, runs, leases, schedules,
// console logs and blobs, kept in a database (SQLite in the data
// directory, or PostgreSQL shared by several replicas) and on disk under
// the data directory, served over HTTP/JSON (see package api for the
// routes). It knows nothing of sandboxes.
//
// Its layers: the queue (package scheduler/queue) matches queued runs
// with waiting workers in memory; the store (store*.go) holds the database
// and offers typed operations, one file per subject (store_lease.go for the
// run's lease: claim, renewal, expiry, result; store_jobs.go, store_runs.go,
// store_groups.go, store_tokens.go, store_hosts.go, store_logs.go,
// store_cron.go, store_attest.go, store_repos.go, store_owners.go, store_meta.go,
// store_retention.go (retention.go's sweep and quotas), and
// store_notify.go for the replicas' notifications), each choosing its own
// transaction mode; the SQL lives there only (TestSQLOnlyInStore). The
// Server's methods hold the logic over them (caches, the queue,
// notifications); the HTTP handlers (http.go) and the web view
// (webview.go) call those methods or the store's reads.
package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/scheduler/blobs"
	"github.com/kiln-build/kiln/scheduler/queue"
)

// Server is one kiln server over its data directory. Only one Server may
// open a data directory at a time. Its methods are safe for concurrent use.
type Server struct {
	cfg     *config.Server
	dataDir string
	id      string // the server's identity, made at first start
	now     func() time.Time
	log     *slog.Logger

	st      *store
	blobs   *blobs.Store
	disp    *queue.Dispatcher
	notify  *notifier
	metrics *metrics

	leaseDuration time.Duration
	maxAttempts   int
	consoleCap    int64
	enrollTTL     time.Duration

	auth authCache

	// leader is set while this replica holds the leader lock (PostgreSQL).
	leader atomic.Bool
	// replica names this server in its queue notifications, and feed
	// carries the runs other replicas queued (0: reload the queue).
	replica string
	feed    chan queueNote

	clientLimit *rateLimiter // per client token
	workerLimit *rateLimiter // per worker token

	specMu sync.Mutex
	specs  map[string]*api.Job
	// heads caches each job's jobHead for executeOne, and hostStates
	// each host's hostCached (PostgreSQL).
	heads      sync.Map
	hostStates sync.Map
	// graphJobs holds the names of jobs last executed through their
	// graph (graph.go): a hint, the database decides.
	graphJobs sync.Map
	// graphHeads caches the current revision of the jobs graphs walk
	// (graphHead): the graph's write re-checks each in the database.
	graphHeads sync.Map

	// pins caches the manifests of the image versions runs are pinned
	// to, by NAME@VERSION (see pinned).
	pins sync.Map
	// hooks: incoming webhooks (webhooks.go); events: outgoing ones
	// (events.go).
	hooks  *webhooks
	events *events
	gc     gcState // retention.go
	// repoLocks holds a *sync.Mutex per repository (repos.go repoMu).
	repoLocks sync.Map
}

// Option changes a Server built by New.
type Option func(*Server)

// WithClock replaces time.Now (tests of leases and schedules).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// New opens (creating if needed) the data directory cfg.DataDir, applies
// the schema migrations, makes the admin token on first start, rebuilds
// the queue and expires leases that ran out while the server was down.
func New(ctx context.Context, cfg *config.Server, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, dataDir: cfg.DataDir, now: time.Now, log: slog.Default(),
		notify:        newNotifier(),
		leaseDuration: time.Duration(cfg.LeaseDuration), maxAttempts: cfg.MaxAttempts,
		consoleCap: int64(cfg.ConsoleCap), enrollTTL: time.Duration(cfg.EnrollmentTTL),
		specs:   map[string]*api.Job{},
		replica: newFence()[:12], feed: make(chan queueNote, 4096),
		clientLimit: newRateLimiter(cfg.RateLimit, cfg.RateBurst),
		workerLimit: newRateLimiter(cfg.WorkerRateLimit, cfg.WorkerRateBurst),
	}
	s.metrics = newMetrics(s)
	s.initWebhooks()
	s.initEvents()
	s.initRetention()
	for _, o := range opts {
		o(s)
	}
	s.disp = queue.New(time.Duration(cfg.ReproduceWait), func() time.Time { return s.now() })
	s.disp.SetLimits(func(owner string) queue.Limits {
		o := s.ownerConfig(owner)
		return queue.Limits{Share: o.Share, MaxRunning: o.MaxRunning}
	})
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	var err error
	if cfg.Postgres() {
		s.st, err = openPGStore(ctx, cfg.Store.URL)
	} else {
		s.st, err = openStore(filepath.Join(s.dataDir, "kiln.db"), cfg.Synchronous)
	}
	if err != nil {
		return nil, err
	}
	// Replicas share the blob directory: their upload sessions are
	// locked in the database they share.
	s.st.onRetry(s.metrics.storeRetries.Inc)
	if s.blobs, err = blobs.Open(filepath.Join(s.dataDir, "blobs"), s.st.uploadLocker()); err != nil {
		s.st.close()
		return nil, err
	}
	for _, step := range []func(context.Context) error{s.ensureServerID, s.ensureAdminToken, s.loadRunning, s.loadQueue, s.expireLeases, s.resumeNeeds, s.resumeTriggers} {
		if err := step(ctx); err != nil {
			s.st.close()
			return nil, err
		}
	}
	return s, nil
}

// ID returns the server's identity: random, made at its first start and
// kept in its database.
func (s *Server) ID() string { return s.id }

// ensureServerID reads the server's identity, making it on first start.
func (s *Server) ensureServerID(ctx context.Context) error {
	id, found, err := s.st.serverID(ctx)
	if err != nil {
		return fmt.Errorf("server id: %w", err)
	}
	if found {
		s.id = id
		return nil
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	if s.id, err = s.st.makeServerID(ctx, hex.EncodeToString(b[:])); err != nil {
		return fmt.Errorf("server id: %w", err)
	}
	s.log.Info("made the server's identity", "id", s.id)
	return nil
}

// Close closes the database. Call it after Serve returned.
func (s *Server) Close() error { return s.st.close() }

// Serve serves the API on ln (TLS when the config names a cert and key)
// and runs the lease-expiry and schedule timers until ctx ends; then it
// shuts the listener down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	wg.Add(3)
	if s.st.postgres() {
		wg.Add(3)
		listening := make(chan struct{})
		go func() { defer wg.Done(); s.listen(ctx, listening) }()
		go func() { defer wg.Done(); s.feedQueue(ctx, s.feed) }()
		go func() { defer wg.Done(); s.lead(ctx) }()
		s.awaitListening(ctx, listening)
	}
	// One replica sweeps: the others would only meet its writes as
	// conflicts (a schedule still fires once per tick if two did).
	go func() {
		defer wg.Done()
		s.every(ctx, time.Duration(s.cfg.LeaseCheck), "lease expiry", s.ifLeading(s.expireLeases))
	}()
	go func() {
		defer wg.Done()
		s.every(ctx, time.Duration(s.cfg.CronTick), "schedules", s.ifLeading(s.fireSchedules))
	}()
	go func() {
		defer wg.Done()
		s.every(ctx, max(time.Duration(s.cfg.PartialTTL)/24, time.Second), "partial uploads", s.sweepPartials)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.every(ctx, time.Duration(s.cfg.NotifyTick), "events", s.eventTick)
	}()
	s.restoreBlobTrash()
	if iv := time.Duration(s.cfg.Retention.Interval); iv > 0 {
		// Every replica tries; the advisory lock lets one sweep at a time.
		wg.Add(1)
		go func() { defer wg.Done(); s.every(ctx, iv, "retention", s.collectOnSchedule) }()
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLSCert != "" {
			errc <- hs.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = hs.Shutdown(sctx)
		cancel()
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// ifLeading runs fn only on the leader replica.
func (s *Server) ifLeading(fn func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		if !s.leading() {
			return nil
		}
		return fn(ctx)
	}
}

func (s *Server) every(ctx context.Context, d time.Duration, what string, fn func(context.Context) error) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				s.log.Error(what, "err", err)
			}
		}
	}
}

// sweepPartials removes partial blob uploads that got no byte for
// partial_ttl: an uploader that comes back starts again from 0.
func (s *Server) sweepPartials(ctx context.Context) error {
	n, err := s.blobs.Sweep(ctx, s.now().Add(-time.Duration(s.cfg.PartialTTL)))
	if n > 0 {
		s.log.Info("expired partial uploads removed", "count", n)
	}
	return err
}

// Tick runs the lease-expiry check and fires due schedules once, at the
// injected clock's now (tests).
func (s *Server) Tick(ctx context.Context) error {
	return errors.Join(s.expireLeases(ctx), s.fireSchedules(ctx))
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }

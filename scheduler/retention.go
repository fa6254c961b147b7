package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/blobs"
)

// Retention and collection (docs/retention.md). A sweep:
//
//  1. puts back blob files an interrupted sweep left in the blob store's
//     trash (blobs.RestoreTrash);
//  2. plans which finished runs the rules no longer keep (keepPlan), and
//     removes them in batches, each one transaction with the run's
//     console, artifact rows and attestation (store.removeRuns);
//  3. lists the blobs the database still references, one query per kind
//     of reference (liveBlobQueries), walks the blob directory and
//     removes every file no query named and nothing used within the
//     grace period (blobs.Store.Remove).
//
// Rows go before files, so a sweep killed anywhere leaves no row naming a
// missing file, only files no row names, which the next sweep removes.
// One sweep runs at a time: per process a mutex, across replicas an
// advisory lock (store.tryExclusive). A blob an upload is writing is a
// partial file the sweep never looks at; one just stored, or just told to
// an uploader, a result or a job add to be there, is young (the blob
// store renews a file's time at each such lookup) and left alone.

// gcBatch is how many runs one transaction removes, and how many blob
// files are removed between two pauses: small enough that dispatch's
// writes are never held long.
const gcBatch = 64

// gcDuty is the share of its time a sweep works: after each batch it
// waits as long as the batch took, over (1-gcDuty)/gcDuty, so that a
// big sweep leaves the database's writer and the disk to dispatch most
// of the time (docs/benchmarks.md, "Collection beside dispatch").
const gcDuty = 0.5

// pace waits after a batch that started at t0 (see gcDuty), or the test
// hook's pause.
func (s *Server) pace(ctx context.Context, t0 time.Time) error {
	wait := time.Duration(float64(time.Since(t0)) * (1 - gcDuty) / gcDuty)
	if s.gc.pause > 0 {
		wait = s.gc.pause
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}

// gcState is the Server's collection state.
type gcState struct {
	mu sync.Mutex // held by the running sweep
	// pause, from KILN_GC_TEST_PAUSE, makes a sweep remove one run or
	// one blob at a time and wait this long after each: tests kill a
	// server in the middle of a sweep with it.
	pause time.Duration

	reclaimed prometheus.Counter
	removed   *prometheus.CounterVec
	stored    *prometheus.GaugeVec // bytes by kind
	objects   *prometheus.GaugeVec // objects by kind
}

// initRetention sets the collection up: its metrics and its test hook.
func (s *Server) initRetention() {
	g := &s.gc
	if v := os.Getenv("KILN_GC_TEST_PAUSE"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			g.pause = d
		}
	}
	g.reclaimed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kiln_gc_reclaimed_bytes_total", Help: "Bytes of consoles and blob files removed by collection.",
	})
	g.removed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_gc_removed_total", Help: "Objects removed by collection, by kind (run, console, blob).",
	}, []string{"kind"})
	g.stored = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kiln_stored_bytes", Help: "Bytes stored, by kind (blob, console), as the last collection counted them.",
	}, []string{"kind"})
	g.objects = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kiln_stored_objects", Help: "Objects stored, by kind (run, console, blob), as the last collection counted them.",
	}, []string{"kind"})
	s.metrics.reg.MustRegister(g.reclaimed, g.removed, g.stored, g.objects)
}

// collectGarbage runs one sweep (see above); dryRun only counts what
// would go. A sweep already running here or on another replica makes it
// answer Busy at once.
func (s *Server) collectGarbage(ctx context.Context, dryRun bool) (*api.GCReport, error) {
	rep := &api.GCReport{DryRun: dryRun}
	if !s.gc.mu.TryLock() {
		rep.Busy = true
		return rep, nil
	}
	defer s.gc.mu.Unlock()
	start := time.Now()
	ran, err := s.st.tryExclusive(ctx, gcLock, func(ctx context.Context) error {
		return s.sweep(ctx, dryRun, rep)
	})
	rep.Busy = !ran
	rep.Bytes = rep.ConsoleBytes + rep.BlobBytes
	rep.Took = api.Duration(time.Since(start))
	if err != nil {
		return nil, fmt.Errorf("collect: %w", err)
	}
	if ran && !dryRun && (rep.Runs > 0 || rep.Blobs > 0) {
		s.log.Info("collected", "runs", rep.Runs, "consoles", rep.Consoles, "blobs", rep.Blobs, "bytes", rep.Bytes, "took", time.Since(start))
	}
	return rep, nil
}

func (s *Server) sweep(ctx context.Context, dryRun bool, rep *api.GCReport) error {
	if !dryRun {
		if n, err := s.blobs.RestoreTrash(); err != nil {
			return err
		} else if n > 0 {
			s.log.Info("put back blob files an interrupted collection left in trash", "count", n)
		}
	}
	gone, kept, err := s.keepPlan(ctx)
	if err != nil {
		return err
	}
	rep.Kept = kept
	goneSet := map[int64]bool{}
	if dryRun {
		for _, r := range gone {
			goneSet[r.id] = true
			rep.Runs++
			if r.logLen > 0 {
				rep.Consoles++
				rep.ConsoleBytes += r.logStored
			}
		}
	} else {
		t0 := time.Now()
		if err := s.removeRuns(ctx, gone, rep); err != nil {
			return err
		}
		if rep.Runs > 0 {
			s.log.Info("collection: runs removed", "runs", rep.Runs, "consoles", rep.Consoles, "took", time.Since(t0))
		}
	}
	return s.sweepBlobs(ctx, dryRun, goneSet, rep)
}

// keepPlan decides which finished runs go: the ids of those the rules
// no longer keep, and how many finished runs stay.
func (s *Server) keepPlan(ctx context.Context) (gone []finishedRun, kept int, err error) {
	runs, err := s.st.finishedRuns(ctx)
	if err != nil {
		return nil, 0, err
	}
	liveGroups, err := s.st.liveGroups(ctx)
	if err != nil {
		return nil, 0, err
	}
	jobRules, err := s.st.jobRetentions(ctx)
	if err != nil {
		return nil, 0, err
	}
	gone = planRetention(runs, liveGroups, s.cfg.Retention.Retention, jobRules, s.now())
	return gone, len(runs) - len(gone), nil
}

// planRetention returns the ids of the runs that go (see
// docs/retention.md): a run stays if it is kept (kiln run keep), if it
// is among the last keep_last runs of its job, if it finished within
// keep_for, or if it is a member (or the diffoscope task) of a
// reproduce group with a member that stays or has not finished: group
// attestations name every member, so a group is kept whole.
func planRetention(runs []finishedRun, liveGroups map[int64]bool, server api.Retention, jobRules map[string]*api.Retention, now time.Time) []finishedRun {
	byJob := map[string][]int{}
	for i, r := range runs {
		if r.kind == "" || r.kind == api.KindJob {
			byJob[r.job] = append(byJob[r.job], i)
		}
	}
	keep := make([]bool, len(runs))
	for job, idx := range byJob {
		rules := server.Over(jobRules[job])
		// Newest first: the last keep_last runs by id (the order they
		// were made in).
		slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(runs[b].id, runs[a].id) })
		for rank, i := range idx {
			r := runs[i]
			keep[i] = rules.KeepsAll() || r.kept ||
				(rules.KeepLast > 0 && rank < rules.KeepLast) ||
				(rules.KeepFor > 0 && now.Sub(time.Unix(0, r.finished)) < rules.KeepFor.Std())
		}
	}
	keptGroups := map[int64]bool{}
	for g := range liveGroups {
		keptGroups[g] = true
	}
	for i, r := range runs {
		if r.kept && r.kind != "" && r.kind != api.KindJob {
			keep[i] = true
		}
		if keep[i] && r.grp != 0 {
			keptGroups[r.grp] = true
		}
	}
	var gone []finishedRun
	for i, r := range runs {
		if !keep[i] && (r.grp == 0 || !keptGroups[r.grp]) {
			gone = append(gone, r)
		}
	}
	slices.SortFunc(gone, func(a, b finishedRun) int { return cmp.Compare(a.id, b.id) })
	return gone
}

// removeRuns removes the runs gone, a batch per transaction.
func (s *Server) removeRuns(ctx context.Context, gone []finishedRun, rep *api.GCReport) error {
	batch := gcBatch
	if s.gc.pause > 0 {
		batch = 1
	}
	ids := make([]int64, 0, batch)
	for len(gone) > 0 {
		n := min(batch, len(gone))
		ids = ids[:0]
		for _, r := range gone[:n] {
			ids = append(ids, r.id)
		}
		t0 := time.Now()
		out, err := s.st.removeRuns(ctx, ids)
		if err != nil {
			return err
		}
		gone = gone[n:]
		rep.Runs += out.runs
		rep.Consoles += out.consoles
		rep.ConsoleBytes += out.consoleBytes
		rep.Kept += n - out.runs // kept meanwhile (kiln run keep)
		s.gc.removed.WithLabelValues("run").Add(float64(out.runs))
		s.gc.removed.WithLabelValues("console").Add(float64(out.consoles))
		s.gc.reclaimed.Add(float64(out.consoleBytes))
		if err := s.pace(ctx, t0); err != nil {
			return err
		}
	}
	return nil
}

// sweepBlobs removes (dry: counts) the blob files no reference names and
// nothing used within the grace period. goneSet (dry run) holds the runs
// that would go: their references do not count.
func (s *Server) sweepBlobs(ctx context.Context, dryRun bool, goneSet map[int64]bool, rep *api.GCReport) error {
	grace := time.Duration(s.cfg.Retention.Grace)
	live := map[string]bool{}
	for _, q := range liveBlobQueries {
		err := q.refs(s.st, ctx, s.now().Add(-grace), func(r blobRef) {
			if r.run == 0 || !goneSet[r.run] {
				live[r.sha] = true
			}
		})
		if err != nil {
			return fmt.Errorf("%s: %w", q.kind, err)
		}
	}
	// File times are the wall clock's (the blob store renews them).
	cutoff := time.Now().Add(-grace)
	var dead []blobs.Blob
	err := s.blobs.Walk(ctx, func(b blobs.Blob) error {
		if live[b.SHA256] || b.ModTime.After(cutoff) {
			rep.BlobsKept++
			rep.BlobBytesKept += b.Size
			return nil
		}
		dead = append(dead, b)
		return nil
	})
	if err != nil {
		return err
	}
	if dryRun {
		for _, b := range dead {
			rep.Blobs++
			rep.BlobBytes += b.Size
		}
		return s.countStored(ctx, rep, true)
	}
	var removed []string
	batch := gcBatch
	if s.gc.pause > 0 {
		batch = 1
	}
	t0 := time.Now()
	for i, b := range dead {
		ok, size, err := s.blobs.Remove(b.SHA256, cutoff)
		if err != nil {
			return err
		}
		if !ok {
			rep.BlobsKept++
			rep.BlobBytesKept += b.Size
			continue
		}
		rep.Blobs++
		rep.BlobBytes += size
		s.gc.removed.WithLabelValues("blob").Inc()
		s.gc.reclaimed.Add(float64(size))
		removed = append(removed, b.SHA256)
		if (i+1)%batch == 0 {
			if err := s.pace(ctx, t0); err != nil {
				return err
			}
			t0 = time.Now()
		}
	}
	for len(removed) > 0 {
		n := min(gcBatch, len(removed))
		if err := s.st.dropGrants(ctx, removed[:n]); err != nil {
			return err
		}
		removed = removed[n:]
	}
	return s.countStored(ctx, rep, false)
}

// countStored sets the stored gauges after a sweep.
func (s *Server) countStored(ctx context.Context, rep *api.GCReport, dryRun bool) error {
	consoles, consoleBytes, err := s.st.consoleTotals(ctx)
	if err != nil {
		return err
	}
	blobN, blobBytes := rep.BlobsKept, rep.BlobBytesKept
	if dryRun {
		blobN, blobBytes = blobN+rep.Blobs, blobBytes+rep.BlobBytes
	}
	s.gc.stored.WithLabelValues("blob").Set(float64(blobBytes))
	s.gc.stored.WithLabelValues("console").Set(float64(consoleBytes))
	s.gc.objects.WithLabelValues("blob").Set(float64(blobN))
	s.gc.objects.WithLabelValues("console").Set(float64(consoles))
	runs := rep.Kept
	if dryRun {
		runs += rep.Runs
	}
	s.gc.objects.WithLabelValues("run").Set(float64(runs))
	return nil
}

// restoreBlobTrash puts back, at start, the blob files a sweep killed
// mid-removal left in trash: one a lookup renewed just before the kill
// may be named by a result accepted since, and must not wait for the next
// sweep to be downloadable again.
func (s *Server) restoreBlobTrash() {
	if n, err := s.blobs.RestoreTrash(); err != nil {
		s.log.Warn("putting back blob files an interrupted collection left in trash", "err", err)
	} else if n > 0 {
		s.log.Info("put back blob files an interrupted collection left in trash", "count", n)
	}
}

// collectOnSchedule is the [retention] interval's sweep.
func (s *Server) collectOnSchedule(ctx context.Context) error {
	_, err := s.collectGarbage(ctx, false)
	return err
}

// hGC is POST /v1/gc[?dry_run=1] (admin).
func (s *Server) hGC(w http.ResponseWriter, r *http.Request, _ *principal) error {
	dry := r.URL.Query().Get("dry_run")
	if dry != "" && dry != "0" && dry != "1" {
		return badRequest("dry_run %q: want 1 or 0", dry)
	}
	rep, err := s.collectGarbage(r.Context(), dry == "1")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rep)
}

// hKeepRun is POST (keep) and DELETE (hand back to the rules)
// /v1/runs/{id}/keep.
func (s *Server) hKeepRun(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	if err := s.st.setKept(r.Context(), id, r.Method == http.MethodPost); err != nil {
		return err
	}
	run, err := s.getRun(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}

// checkQuota refuses more work or uploads from owner when it stores
// more than its storage_quota (server.toml [owners.NAME]): an execute
// when it is at or over it (429), an upload of size bytes that would
// take it over (413).
func (s *Server) checkQuota(ctx context.Context, owner string, upload int64) error {
	quota := int64(s.ownerConfig(owner).StorageQuota)
	if quota <= 0 {
		return nil
	}
	used, err := s.st.ownerUsage(ctx, owner)
	if err != nil {
		return err
	}
	name := ownerName(owner)
	switch {
	case upload > 0 && used+upload > quota:
		return errorf(http.StatusRequestEntityTooLarge, api.CodeQuota,
			"owner %s stores %d bytes of artifacts and consoles: an upload of %d bytes would exceed storage_quota %d (server.toml [owners.%s])",
			name, used, upload, quota, name)
	case upload == 0 && used >= quota:
		return errorf(http.StatusTooManyRequests, api.CodeQuota,
			"owner %s stores %d bytes of artifacts and consoles: storage_quota is %d (server.toml [owners.%s]); remove runs or wait for retention",
			name, used, quota, name)
	}
	return nil
}

// checkExecuteQuota is checkQuota for an execute of job name by p.
func (s *Server) checkExecuteQuota(ctx context.Context, p *principal, name string) error {
	if len(s.cfg.Owners) == 0 {
		return nil
	}
	owner, err := s.st.jobOwner(ctx, name)
	var ae *apiError
	if errors.As(err, &ae) && ae.status == http.StatusNotFound || err == nil && !p.sees(owner) {
		return nil // executeJob says so, with the rules for who may know
	}
	if err != nil {
		return err
	}
	return s.checkQuota(ctx, owner, 0)
}

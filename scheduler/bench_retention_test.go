package scheduler_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// BenchmarkSweepBesideDispatch (docs/benchmarks.md, "Collection beside
// dispatch"): a server holding 100,000 finished runs with 200,000
// artifact blobs, of which keep_last = 1 keeps one run, measures dispatch
// latency (execute to lease, one run at a time, workers idle and
// waiting) without a sweep, then while `POST /v1/gc` removes the 99,999
// runs and their 199,998 blob files. Run it once: -benchtime 1x.
func BenchmarkSweepBesideDispatch(b *testing.B) {
	const runs, blobsPerRun = 100_000, 2
	srv := testsupport.StartServer(b, "[retention]", "keep_last = 1", `grace = "1s"`, `interval = "1000h"`)
	ctx := context.Background()
	admin := srv.Client()
	addJobB(b, admin)
	srv.Stop()
	seedRuns(b, srv, runs, blobsPerRun)
	time.Sleep(1100 * time.Millisecond) // the blob files pass the grace period
	srv.Restart()
	admin = benchClient(srv.Client())

	facts := hostFacts("bookworm")
	facts.FreeSlots = 1
	var leasedAt sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 8 {
		tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: fmt.Sprintf("w%d", i), Facts: facts})
		if err != nil {
			b.Fatal(err)
		}
		w := benchClient(srv.ClientWith(resp.Token))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)})
				if err != nil {
					b.Error(err)
					return
				}
				if a == nil {
					continue
				}
				leasedAt.Store(a.RunID, time.Now())
				if _, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	probe := func() time.Duration {
		t0 := time.Now()
		r, err := admin.ExecuteJobWith(ctx, "bench", api.ExecuteRequest{})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if v, ok := leasedAt.Load(r.ID); ok {
				return v.(time.Time).Sub(t0)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	pct := func(lat []time.Duration, p int) float64 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return float64(lat[len(lat)*p/100].Microseconds()) / 1000
	}
	var idle []time.Duration
	for range 300 {
		idle = append(idle, probe())
	}
	b.ResetTimer()
	var sweeping atomic.Bool
	sweeping.Store(true)
	var rep *api.GCReport
	var gcErr error
	gcDone := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(gcDone)
		defer sweeping.Store(false)
		rep, gcErr = admin.GC(ctx, false)
	}()
	var busy []time.Duration
	for sweeping.Load() {
		d := probe()
		if sweeping.Load() {
			busy = append(busy, d)
		}
	}
	<-gcDone
	took := time.Since(start)
	b.StopTimer()
	if gcErr != nil {
		b.Fatal(gcErr)
	}
	if rep.Runs < runs-1 || rep.Blobs != (runs-1)*blobsPerRun {
		b.Fatalf("sweep removed %d runs and %d blobs, want %d and %d", rep.Runs, rep.Blobs, runs-1, (runs-1)*blobsPerRun)
	}
	if len(busy) < 10 {
		b.Fatalf("only %d dispatches during the sweep", len(busy))
	}
	b.ReportMetric(took.Seconds(), "sweep-s")
	b.ReportMetric(float64(len(busy)), "dispatches-during-sweep")
	b.ReportMetric(pct(idle, 50), "p50-dispatch-ms")
	b.ReportMetric(pct(idle, 99), "p99-dispatch-ms")
	b.ReportMetric(pct(busy, 50), "p50-dispatch-sweeping-ms")
	b.ReportMetric(pct(busy, 99), "p99-dispatch-sweeping-ms")
	b.ReportMetric(0, "ns/op")
}

// seedRuns writes n finished runs of job "old", each with per artifacts
// of blob files of their own, straight into a stopped server's database
// and blob directory.
func seedRuns(b *testing.B, srv *testsupport.TestServer, n, per int) {
	b.Helper()
	db := srv.DB()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour).UnixNano()
	runStmt, err := tx.Prepare(`INSERT INTO runs(id, job, revision, state, trigger_kind, created, queued_at, started, finished, log_len, log_stored)
		VALUES ($1, 'old', 1, 'succeeded', 'execute', $2, $2, $2, $2, 0, 0)`)
	if err != nil {
		b.Fatal(err)
	}
	artStmt, err := tx.Prepare(`INSERT INTO artifacts(run, path, size, mode, sha256) VALUES ($1, $2, 1, 420, $3)`)
	if err != nil {
		b.Fatal(err)
	}
	blobs := filepath.Join(srv.DataDir, "blobs")
	buf := make([]byte, 32)
	for i := 1; i <= n; i++ {
		id := int64(1_000_000 + i)
		if _, err := runStmt.Exec(id, old); err != nil {
			b.Fatal(err)
		}
		for j := range per {
			_, _ = rand.Read(buf)
			sha := hex.EncodeToString(buf)
			if _, err := artStmt.Exec(id, fmt.Sprintf("f%d", j), sha); err != nil {
				b.Fatal(err)
			}
			dir := filepath.Join(blobs, sha[:2])
			if err := os.MkdirAll(dir, 0o750); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, sha), []byte{'x'}, 0o640); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}

//go:build linux

package worker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// floodRuns is how many trivial runs owner A queues in BenchmarkFairFlood.
const floodRuns = 2000

// BenchmarkFairFlood is issue 29's fairness figure, with real processes:
// a `kiln server` (SQLite), a `kiln worker` of 2 slots on containerd
// (busybox, warm pool), owner A (a client token) with floodRuns trivial
// runs queued, then owner B queues one. It reports after how many of A's
// runs B's run was leased (A's runs leased between B's execute and B's
// lease), how long after its execute B's run was leased and started,
// and, for scale, how long one of A's runs took a slot (the host's
// throughput over A's runs that ended before B queued). Fair dispatch
// gives B the next free slot: at most one run of A per slot (claims under
// way), and a wait of about one run's length.
//
//	go test -run '^$' -bench BenchmarkFairFlood -benchtime 1x ./worker/
func BenchmarkFairFlood(b *testing.B) {
	testsupport.NeedRoot(b)
	kiln := testsupport.BuildKiln(b)
	srv := testsupport.StartServer(b)
	ctrd := testsupport.StartContainerd(b)
	h := testsupport.NewHost(b, kiln, ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 2\nwarm_pool = true\n")
	h.MustKiln(b, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	testsupport.EnrollWorker(b, srv, h, srv.URL, "h1", "")
	testsupport.StartWorker(b, h)

	ctx := context.Background()
	admin := srv.Client()
	owner := func(name string) *api.Client {
		tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: name})
		if err != nil {
			b.Fatal(err)
		}
		c := srv.ClientWith(tok.Token)
		if _, err := c.AddJob(ctx, &api.Job{Name: name + "-job", Image: "busybox", Script: "true"}); err != nil {
			b.Fatal(err)
		}
		return c
	}
	a, bc := owner("a"), owner("b")
	var before, leaseMS, startMS, aRunMS float64
	for i := range b.N {
		// A's flood, by 8 clients at once.
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= floodRuns {
					if _, err := a.ExecuteJobWith(ctx, "a-job", api.ExecuteRequest{}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if b.Failed() {
			return
		}
		// Steady state: A's runs have been taking the slots for a while;
		// the host's pace over the next 10 of them.
		terminal := func(r api.Run) bool { return api.Terminal(r.State) }
		t0, ended0 := time.Now(), countRuns(b, a, "a-job", terminal)
		var ended int
		for ended = ended0; ended < ended0+10; ended = countRuns(b, a, "a-job", terminal) {
			time.Sleep(100 * time.Millisecond)
		}
		aRun := time.Since(t0) * 2 / time.Duration(ended-ended0) // a slot's time per run
		executed := time.Now()
		br, err := bc.ExecuteJobWith(ctx, "b-job", api.ExecuteRequest{})
		if err != nil {
			b.Fatal(err)
		}
		var bRun *api.Run
		for {
			bRun, err = bc.GetRun(ctx, br.ID)
			if err != nil {
				b.Fatal(err)
			}
			if !bRun.Started.IsZero() || api.Terminal(bRun.State) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		n := countRuns(b, a, "a-job", func(r api.Run) bool {
			return r.Attempt == 1 && r.Leased.After(executed) && r.Leased.Before(bRun.Leased)
		})
		before += float64(n)
		leaseMS += ms(bRun.Leased.Sub(executed))
		startMS += ms(bRun.Started.Sub(executed))
		aRunMS += ms(aRun)
		b.Logf("round %d: B's run leased after %d of A's runs, %s after its execute (started after %s); one run of A held a slot %s",
			i, n, bRun.Leased.Sub(executed).Round(time.Millisecond), bRun.Started.Sub(executed).Round(time.Millisecond), aRun.Round(time.Millisecond))
		// A's backlog goes: cancelled, so that the next round (and the
		// cleanup) do not wait on it.
		for _, r := range listRuns(b, a, "a-job") {
			if r.State == api.StateQueued {
				var ae *api.Error
				if _, err := a.CancelRun(ctx, r.ID); err != nil && (!errors.As(err, &ae) || ae.Body.Code != api.CodeFinished) {
					b.Fatal(err)
				}
			}
		}
	}
	b.ReportMetric(before/float64(b.N), "a-runs-before-b")
	b.ReportMetric(leaseMS/float64(b.N), "b-lease-ms")
	b.ReportMetric(startMS/float64(b.N), "b-start-ms")
	b.ReportMetric(aRunMS/float64(b.N), "a-run-slot-ms")
	b.ReportMetric(0, "ns/op")
}

// listRuns lists every run of job that c sees.
func listRuns(b *testing.B, c *api.Client, job string) []api.Run {
	b.Helper()
	rs, err := c.ListRuns(context.Background(), job, 10*floodRuns)
	if err != nil {
		b.Fatal(err)
	}
	return rs
}

// countRuns counts the runs of job that c sees and that match.
func countRuns(b *testing.B, c *api.Client, job string, match func(api.Run) bool) int {
	b.Helper()
	n := 0
	for _, r := range listRuns(b, c, job) {
		if match(r) {
			n++
		}
	}
	return n
}

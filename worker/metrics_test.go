package worker

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// After runs, a scrape of the worker's metrics shows them: runs by the
// state the server recorded, one observation per phase the executor
// reported, and a lease wait per assignment.
func TestMetricsAfterRuns(t *testing.T) {
	m := NewMetrics()
	// The executor stands in for sandbox.Runner, which calls Observe at
	// each phase (sandbox's TestRunObservesPhases).
	ex := &fakeExec{RunFunc: func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
		for _, p := range []sandbox.Phase{sandbox.PhaseClone, sandbox.PhaseStart, sandbox.PhaseCollect, sandbox.PhaseTeardown} {
			m.ObservePhase(p, time.Millisecond)
		}
		return sandbox.Result{}, nil
	}}
	var mu sync.Mutex
	queue := []*api.Assignment{job("ok"), job("bad")}
	reported := make(chan string, 2)
	srv := &fakeServer{
		LeaseFunc: func(ctx context.Context, _ api.LeaseRequest) (*api.Assignment, error) {
			mu.Lock()
			defer mu.Unlock()
			if len(queue) == 0 {
				return idleLease(ctx)
			}
			a := queue[0]
			queue = queue[1:]
			return a, nil
		},
		ReportResultFunc: func(_ context.Context, id string, _ api.ResultRequest) (*api.Run, error) {
			state := api.StateSucceeded
			if id == "bad" {
				state = api.StateFailed
			}
			reported <- id
			return &api.Run{ID: id, State: state}, nil
		},
	}
	w, _ := newTestWorker(t, srv, ex, oneImage{}, func(c *Config) { c.Metrics = m })
	stop := runWorker(w)
	<-reported
	<-reported
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	hs := httptest.NewServer(m.Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		lines[l] = true
	}
	for _, want := range []string{
		`kiln_worker_runs_total{state="succeeded"} 1`,
		`kiln_worker_runs_total{state="failed"} 1`,
		`kiln_worker_runs_active 0`,
		`kiln_worker_phase_seconds_count{phase="clone"} 2`,
		`kiln_worker_phase_seconds_count{phase="start"} 2`,
		`kiln_worker_phase_seconds_count{phase="collect"} 2`,
		`kiln_worker_phase_seconds_count{phase="teardown"} 2`,
		`kiln_worker_lease_wait_seconds_count 2`,
	} {
		if !lines[want] {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
}

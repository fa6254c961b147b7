package scheduler

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-build/kiln/api"
)

// metrics are the server's counters, written out in the Prometheus text
// format by writeMetrics.
type metrics struct {
	leaseExpiries atomic.Int64
	completed     atomic.Int64
	rateLimited   atomic.Int64

	mu       sync.Mutex
	buckets  []float64 // upper bounds, seconds
	counts   []int64   // per bucket (not cumulative)
	sum      float64
	observed int64
}

func newMetrics() *metrics {
	b := []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	return &metrics{buckets: b, counts: make([]int64, len(b)+1)}
}

// observeDispatch records the time from queued to leased.
func (m *metrics) observeDispatch(d time.Duration) {
	v := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	i := sort.SearchFloat64s(m.buckets, v)
	m.counts[i]++
	m.sum += v
	m.observed++
}

func (s *Server) writeMetrics(ctx context.Context, w io.Writer) error {
	rows, err := s.st.query(ctx, `SELECT state, count(*) FROM runs GROUP BY state`)
	if err != nil {
		return err
	}
	byState := map[string]int64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			rows.Close()
			return err
		}
		byState[st] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	fmt.Fprintf(w, "# HELP kiln_queue_depth Runs waiting for a host.\n# TYPE kiln_queue_depth gauge\nkiln_queue_depth %d\n", byState[api.StateQueued])
	fmt.Fprintf(w, "# HELP kiln_runs Runs by state.\n# TYPE kiln_runs gauge\n")
	for _, st := range []string{api.StateQueued, api.StateLeased, api.StateRunning, api.StateSucceeded, api.StateFailed, api.StateTimedOut, api.StateCancelled, api.StateLost} {
		fmt.Fprintf(w, "kiln_runs{state=%q} %d\n", st, byState[st])
	}
	fmt.Fprintf(w, "# HELP kiln_lease_expiries_total Leases that ran out without a result.\n# TYPE kiln_lease_expiries_total counter\nkiln_lease_expiries_total %d\n", s.metrics.leaseExpiries.Load())
	fmt.Fprintf(w, "# HELP kiln_runs_completed_total Results accepted.\n# TYPE kiln_runs_completed_total counter\nkiln_runs_completed_total %d\n", s.metrics.completed.Load())
	fmt.Fprintf(w, "# HELP kiln_rate_limited_total Requests answered 429 (a token over its rate limit).\n# TYPE kiln_rate_limited_total counter\nkiln_rate_limited_total %d\n", s.metrics.rateLimited.Load())
	m := s.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(w, "# HELP kiln_dispatch_seconds Time from queued to leased.\n# TYPE kiln_dispatch_seconds histogram\n")
	var cum int64
	for i, b := range m.buckets {
		cum += m.counts[i]
		fmt.Fprintf(w, "kiln_dispatch_seconds_bucket{le=\"%g\"} %d\n", b, cum)
	}
	cum += m.counts[len(m.buckets)]
	fmt.Fprintf(w, "kiln_dispatch_seconds_bucket{le=\"+Inf\"} %d\nkiln_dispatch_seconds_sum %g\nkiln_dispatch_seconds_count %d\n", cum, m.sum, m.observed)
	return nil
}

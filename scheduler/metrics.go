package scheduler

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kiln-build/kiln/api"
)

// metrics are the server's own counters, in a registry of its own so that
// two servers in one process (tests) never share one.
type metrics struct {
	reg           *prometheus.Registry
	leaseExpiries prometheus.Counter
	completed     prometheus.Counter
	rateLimited   prometheus.Counter
	storeRetries  prometheus.Counter
	notes         *prometheus.CounterVec
	dispatch      prometheus.Histogram
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		leaseExpiries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_lease_expiries_total", Help: "Leases that ran out without a result.",
		}),
		completed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_runs_completed_total", Help: "Results accepted.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_rate_limited_total", Help: "Requests answered 429 (a token over its rate limit).",
		}),
		storeRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_store_retries_total", Help: "PostgreSQL writes run again after a serialization conflict with another writer.",
		}),
		notes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_replica_notifications_total", Help: "PostgreSQL notifications received from the replicas (this one included), by channel.",
		}, []string{"channel"}),
		dispatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_dispatch_seconds",
			Help:    "Time from queued to leased.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
	}
	m.reg.MustRegister(m.leaseExpiries, m.completed, m.rateLimited, m.storeRetries, m.notes, m.dispatch, runsByState{s})
	return m
}

// observeDispatch records the time from queued to leased.
func (m *metrics) observeDispatch(d time.Duration) { m.dispatch.Observe(d.Seconds()) }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

// runsByState reads the run counts from the store at every scrape, so the
// gauge is exact after a restart and across replicas of one store.
type runsByState struct{ s *Server }

var runsDesc = prometheus.NewDesc("kiln_runs", "Runs by state.", []string{"state"}, nil)

func (c runsByState) Describe(ch chan<- *prometheus.Desc) { ch <- runsDesc }

func (c runsByState) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	byState, err := c.s.st.runsByState(ctx)
	if err != nil {
		c.s.log.Warn("counting runs for metrics", "err", err)
		ch <- prometheus.NewInvalidMetric(runsDesc, err)
		return
	}
	for _, st := range []string{api.StateQueued, api.StateLeased, api.StateRunning, api.StateSucceeded, api.StateFailed, api.StateTimedOut, api.StateCancelled, api.StateLost} {
		ch <- prometheus.MustNewConstMetric(runsDesc, prometheus.GaugeValue, float64(byState[st]), st)
	}
}

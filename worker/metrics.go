package worker

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kiln-build/kiln/sandbox"
)

// Metrics are a worker's own counters, in a registry of their own so that
// two workers in one process (tests) never share one. A nil *Metrics
// records nothing.
type Metrics struct {
	reg       *prometheus.Registry
	runs      *prometheus.CounterVec
	active    prometheus.Gauge
	phases    *prometheus.HistogramVec
	leaseWait prometheus.Histogram
}

// Outcomes of a run as kiln_worker_runs_total counts them, beside the
// states the server answers a reported result with.
const (
	outcomeDropped    = "dropped"    // lease moved or host removed: not reported
	outcomeLost       = "lost"       // could not reattach after a restart
	outcomeRefused    = "refused"    // the assignment failed validation
	outcomeUnreported = "unreported" // the result could not be delivered
)

// NewMetrics makes a worker's metrics, to pass in Config.Metrics and, for
// the phase durations, to sandbox.Runner.Observe as m.ObservePhase.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_worker_runs_total",
			Help: "Runs this worker finished, by the state the server recorded (succeeded, failed, timed_out, cancelled) or dropped, lost, refused, unreported.",
		}, []string{"state"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kiln_worker_runs_active", Help: "Runs in progress on this worker.",
		}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kiln_worker_phase_seconds",
			Help:    "Duration of the phases of a run: clone, start, collect, teardown.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"phase"}),
		leaseWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kiln_worker_lease_wait_seconds",
			Help:    "Time a free slot waited for an assignment, across empty long polls.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600},
		}),
	}
	m.reg.MustRegister(m.runs, m.active, m.phases, m.leaseWait)
	return m
}

// ObservePhase records how long a phase of a run took; it has the shape
// of sandbox.Runner.Observe.
func (m *Metrics) ObservePhase(phase sandbox.Phase, d time.Duration) {
	if m != nil {
		m.phases.WithLabelValues(string(phase)).Observe(d.Seconds())
	}
}

// started counts a run in progress until the returned func is called.
func (m *Metrics) started() (ended func()) {
	if m == nil {
		return func() {}
	}
	m.active.Inc()
	return m.active.Dec
}

func (m *Metrics) ran(state string) {
	if m != nil {
		m.runs.WithLabelValues(state).Inc()
	}
}

func (m *Metrics) leased(waited time.Duration) {
	if m != nil {
		m.leaseWait.Observe(waited.Seconds())
	}
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

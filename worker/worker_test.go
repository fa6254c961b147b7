package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// results records what the fake server was told.
type results struct {
	mu      sync.Mutex
	reports []api.ResultRequest
	console strings.Builder
	got     chan api.ResultRequest
}

func newResults() *results { return &results{got: make(chan api.ResultRequest, 16)} }

func (r *results) report(_ context.Context, id string, req api.ResultRequest) (*api.Run, error) {
	r.mu.Lock()
	r.reports = append(r.reports, req)
	r.mu.Unlock()
	r.got <- req
	return &api.Run{ID: id, State: api.StateFailed}, nil
}

func (r *results) appendLog(_ context.Context, _, _ string, offset int64, data []byte) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := int64(r.console.Len()); offset != n {
		return 0, &api.Error{Status: http.StatusConflict, Body: api.ErrorBody{Code: "log_offset", Length: &n}}
	}
	r.console.Write(data)
	return int64(r.console.Len()), nil
}

func (r *results) consoleText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.console.String()
}

func (r *results) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reports)
}

// runWorker runs w until stop is called; stop returns Run's error.
func runWorker(w *Worker) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return func() error { cancel(); return <-done }
}

// SIGTERM drains: a running job finishes and is reported; past the drain
// timeout it is cancelled and reported.
func TestDrain(t *testing.T) {
	for _, tt := range []struct {
		name       string
		finish     bool // the job ends by itself during the drain
		wantSignal string
	}{
		{"finishes within the drain timeout", true, ""},
		{"cancelled past the drain timeout", false, "SIGKILL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := newResults()
			started, release := make(chan struct{}), make(chan struct{})
			ex := &fakeExec{RunFunc: func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
				close(started)
				select {
				case <-release:
					return sandbox.Result{}, nil
				case <-ctx.Done():
					return sandbox.Result{Exit: sandbox.Exit{Code: 137, Signal: "SIGKILL"}, Cancelled: true}, nil
				}
			}}
			srv := &fakeServer{LeaseFunc: leaseOnce(job("1")), ReportResultFunc: res.report}
			w, _ := newTestWorker(t, srv, ex, oneImage{}, func(c *Config) {
				if !tt.finish {
					c.DrainTimeout = 1 // past it at once
				}
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			<-started
			cancel() // SIGTERM
			if tt.finish {
				close(release)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if res.count() != 1 {
				t.Fatalf("%d results reported, want 1", res.count())
			}
			if got := res.reports[0]; got.Signal != tt.wantSignal || got.Error != "" {
				t.Fatalf("reported %+v, want signal %q and no error", got, tt.wantSignal)
			}
		})
	}
}

// A cancel from the heartbeat stops the run, which is reported (as
// SIGTERM when the job exited 0 on it); a revoke stops it and reports
// nothing.
func TestCancelAndRevoke(t *testing.T) {
	for _, tt := range []struct {
		name       string
		answer     func(id string) *api.HeartbeatResponse
		wantReport bool
	}{
		{"cancel", func(id string) *api.HeartbeatResponse { return &api.HeartbeatResponse{Cancel: []string{id}} }, true},
		{"revoke", func(id string) *api.HeartbeatResponse { return &api.HeartbeatResponse{Revoked: []string{id}} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := newResults()
			started, stopped := make(chan struct{}), make(chan struct{})
			forgotten := make(chan string, 1)
			ex := &fakeExec{
				RunFunc: func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
					close(started)
					<-ctx.Done()
					close(stopped)
					return sandbox.Result{}, nil // the job trapped TERM and exited 0
				},
				ForgetFunc: func(id string) error { forgotten <- id; return nil },
			}
			var heartbeats sync.Mutex
			srv := &fakeServer{LeaseFunc: leaseOnce(job("7")), ReportResultFunc: res.report, AppendLogFunc: res.appendLog,
				HeartbeatFunc: func(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
					heartbeats.Lock()
					defer heartbeats.Unlock()
					if slices.ContainsFunc(req.Leases, func(l api.LeaseRef) bool { return l.RunID == "7" && l.Fence == "f-7" }) {
						return tt.answer("7"), nil
					}
					return &api.HeartbeatResponse{}, nil
				}}
			w, logs := newTestWorker(t, srv, ex, oneImage{}, nil)
			stop := runWorker(w)
			<-started
			<-stopped
			if id := <-forgotten; id != "7" {
				t.Fatalf("forgot %q", id)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.wantReport && (res.count() != 1 || res.reports[0].Signal != "SIGTERM"):
				t.Fatalf("reports %+v, want one with SIGTERM", res.reports)
			case !tt.wantReport && res.count() != 0:
				t.Fatalf("a revoked run was reported: %+v", res.reports)
			case !tt.wantReport && !strings.Contains(logs.String(), "result dropped"):
				t.Fatalf("log does not say the result was dropped:\n%s", logs)
			}
		})
	}
}

// Reporting retries what may pass later and stops at once on what cannot.
func TestReportRetryPolicy(t *testing.T) {
	n := int64(5)
	stale := &api.Error{Status: http.StatusConflict, Body: api.ErrorBody{Code: "stale_fence"}}
	for _, tt := range []struct {
		name      string
		answers   []error // one per call; past the end: accepted
		wantCalls int
		wantLog   string
	}{
		{"5xx then accepted", []error{&api.Error{Status: 503}, &api.Error{Status: 500}}, 3, "reported"},
		{"connection refused then accepted", []error{fmt.Errorf("dial: %w", api.ErrUnreachable)}, 2, "reported"},
		{"429 with Retry-After then accepted", []error{&api.Error{Status: 429, RetryAfter: 1}}, 2, "reported"},
		{"400 stops", []error{&api.Error{Status: 400}}, 1, "result not reported"},
		{"403 stops", []error{&api.Error{Status: 403}}, 1, "result not reported"},
		{"404 stops", []error{&api.Error{Status: 404}}, 1, "result not reported"},
		{"409 stale fence stops", []error{stale}, 1, "lease moved"},
		{"409 log offset is not a result answer, stops", []error{&api.Error{Status: 409, Body: api.ErrorBody{Code: "log_offset", Length: &n}}}, 1, "result not reported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			calls := 0
			done := make(chan struct{})
			srv := &fakeServer{LeaseFunc: leaseOnce(job("3")),
				ReportResultFunc: func(ctx context.Context, id string, req api.ResultRequest) (*api.Run, error) {
					mu.Lock()
					defer mu.Unlock()
					calls++
					if calls <= len(tt.answers) {
						if calls == len(tt.answers) && tt.wantCalls == calls {
							close(done)
						}
						return nil, tt.answers[calls-1]
					}
					close(done)
					return &api.Run{ID: id, State: api.StateSucceeded}, nil
				}}
			w, logs := newTestWorker(t, srv, &fakeExec{}, oneImage{}, nil)
			stop := runWorker(w)
			<-done
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if calls != tt.wantCalls {
				t.Fatalf("%d report calls, want %d", calls, tt.wantCalls)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("log lacks %q:\n%s", tt.wantLog, logs)
			}
		})
	}
}

// A result the server refuses as too large (413: too many or too long
// artifact entries) becomes a failed run without its artifacts, with the
// reason in its error and console, instead of being retried for hours.
func TestResultTooLargeEndsTheRunFailed(t *testing.T) {
	res := newResults()
	calls := 0
	srv := &fakeServer{LeaseFunc: leaseOnce(job("5")), AppendLogFunc: res.appendLog,
		ReportResultFunc: func(ctx context.Context, id string, req api.ResultRequest) (*api.Run, error) {
			calls++
			if len(req.Artifacts) > 100 {
				return nil, &api.Error{Status: http.StatusRequestEntityTooLarge, Body: api.ErrorBody{Code: "too_large", Error: "request body exceeds 4194304 bytes"}}
			}
			return res.report(ctx, id, req)
		}}
	ex := &fakeExec{RunFunc: func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
		var r sandbox.Result
		for i := range 5000 {
			name := fmt.Sprintf("f%05d", i)
			if err := os.MkdirAll(req.OutDir, 0o755); err != nil {
				return r, err
			}
			if err := os.WriteFile(req.OutDir+"/"+name, nil, 0o644); err != nil {
				return r, err
			}
			r.Artifacts = append(r.Artifacts, sandbox.Artifact{Path: name, Mode: 0o644, SHA256: strings.Repeat("0", 64)})
		}
		return r, nil
	}}
	w, _ := newTestWorker(t, srv, ex, oneImage{}, nil)
	stop := runWorker(w)
	got := <-res.got
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("%d report calls, want the refused one and the failed one", calls)
	}
	if len(got.Artifacts) != 0 || got.ExitCode != -1 || !strings.Contains(got.Error, "too large (5000 artifacts") {
		t.Fatalf("second report %+v, want a failure without artifacts naming the cause", got)
	}
	if c := res.consoleText(); !strings.Contains(c, "[kiln] the server refused the result as too large") {
		t.Fatalf("console lacks the reason: %q", c)
	}
}

// A 401 means the host was removed: the worker stops at once, drops its
// running job without reporting it, stops shipping its console, and says
// so in its log.
func TestHostRemovedStopsEverything(t *testing.T) {
	for _, tt := range []struct {
		name string
		srv  func(started <-chan struct{}, res *results) *fakeServer
	}{
		{"401 on lease", func(<-chan struct{}, *results) *fakeServer {
			return &fakeServer{LeaseFunc: func(context.Context, api.LeaseRequest) (*api.Assignment, error) {
				return nil, &api.Error{Status: http.StatusUnauthorized}
			}}
		}},
		{"401 on heartbeat while a job runs", func(started <-chan struct{}, res *results) *fakeServer {
			return &fakeServer{LeaseFunc: leaseOnce(job("9")), ReportResultFunc: res.report, AppendLogFunc: res.appendLog,
				HeartbeatFunc: func(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
					select {
					case <-started:
						return nil, &api.Error{Status: http.StatusUnauthorized}
					default:
						return &api.HeartbeatResponse{}, nil
					}
				}}
		}},
		{"401 on a console append", func(started <-chan struct{}, res *results) *fakeServer {
			return &fakeServer{LeaseFunc: leaseOnce(job("9")), ReportResultFunc: res.report,
				AppendLogFunc: func(context.Context, string, string, int64, []byte) (int64, error) {
					return 0, &api.Error{Status: http.StatusUnauthorized}
				}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := newResults()
			started := make(chan struct{})
			ex := &fakeExec{}
			ex.RunFunc = func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
				// Console output nudges the shipper, as a job's does.
				if err := os.WriteFile(ex.ConsolePath(req.RunID), []byte("hello\n"), 0o644); err != nil {
					return sandbox.Result{}, err
				}
				req.Console.Write([]byte("hello\n"))
				close(started)
				<-ctx.Done()
				return sandbox.Result{Exit: sandbox.Exit{Code: 137, Signal: "SIGKILL"}, Cancelled: true}, nil
			}
			w, logs := newTestWorker(t, tt.srv(started, res), ex, oneImage{}, nil)
			// No cancel: the 401 alone must end Run.
			err := w.Run(context.Background())
			if !errors.Is(err, ErrHostRemoved) || !errors.Is(err, api.ErrUnauthorized) {
				t.Fatalf("Run returned %v, want ErrHostRemoved", err)
			}
			if res.count() != 0 {
				t.Fatalf("a run of a removed host was reported: %+v", res.reports)
			}
			if l := logs.String(); !strings.Contains(l, "refused this host's credential") || !strings.Contains(l, "no longer shipped") {
				t.Fatalf("log does not say the host was removed and shipping stopped:\n%s", l)
			}
		})
	}
}

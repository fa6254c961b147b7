package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestPermanent(t *testing.T) {
	n := int64(3)
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"400", &Error{Status: 400}, true},
		{"401", &Error{Status: 401}, true},
		{"403", &Error{Status: 403}, true},
		{"404", &Error{Status: 404}, true},
		{"409 stale fence", &Error{Status: 409, Body: ErrorBody{Code: "stale_fence"}}, true},
		{"409 exists", &Error{Status: 409, Body: ErrorBody{Code: "exists"}}, true},
		{"409 log offset", &Error{Status: 409, Body: ErrorBody{Code: "log_offset", Length: &n}}, true},
		{"409 blob offset", &Error{Status: 409, Body: ErrorBody{Code: "blob_offset", Length: &n}}, false},
		{"413", &Error{Status: 413}, true},
		{"408", &Error{Status: 408}, false},
		{"429", &Error{Status: 429}, false},
		{"500", &Error{Status: 500}, false},
		{"503", &Error{Status: 503}, false},
		{"wrapped 401", fmt.Errorf("lease: %w", &Error{Status: 401}), true},
		{"unreachable", fmt.Errorf("dial: %w", ErrUnreachable), false},
		{"local file", &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist}, true},
		{"broken connection", errors.New("unexpected EOF"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Permanent(tt.err); got != tt.want {
				t.Fatalf("Permanent(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestRetryAfterHeader(t *testing.T) {
	for _, tt := range []struct {
		h    string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat), 0},
	} {
		resp := &http.Response{Header: http.Header{"Retry-After": {tt.h}}}
		if got := retryAfterHeader(resp); got != tt.want {
			t.Errorf("Retry-After %q = %s, want %s", tt.h, got, tt.want)
		}
	}
	if d, ok := RetryAfter(&Error{Status: 429, RetryAfter: time.Hour}); !ok || d != maxRetryAfter {
		t.Errorf("a Retry-After of an hour waits %s, want the cap %s", d, maxRetryAfter)
	}
}

var fast = Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}

func TestRetry(t *testing.T) {
	for _, tt := range []struct {
		name      string
		answers   []error
		wantCalls int
		wantErr   error
	}{
		{"first try", nil, 1, nil},
		{"transient twice", []error{&Error{Status: 502}, ErrUnreachable}, 3, nil},
		{"permanent at once", []error{&Error{Status: 413}}, 1, ErrTooLarge},
		{"permanent after transient", []error{&Error{Status: 503}, &Error{Status: 401}}, 2, ErrUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			var notified []error
			v, err := Retry(context.Background(), fast, func(err error, _ time.Duration) { notified = append(notified, err) }, func() (int, error) {
				calls++
				if calls <= len(tt.answers) {
					return 0, tt.answers[calls-1]
				}
				return 42, nil
			})
			if calls != tt.wantCalls || !errors.Is(err, tt.wantErr) || (err == nil && v != 42) {
				t.Fatalf("calls %d, v %d, err %v; want %d calls, err %v", calls, v, err, tt.wantCalls, tt.wantErr)
			}
			if tt.wantErr == nil && len(notified) != len(tt.answers) {
				t.Fatalf("notified %v, want each of %v", notified, tt.answers)
			}
		})
	}
}

// A cancelled context ends the retries with the last error and ctx's.
func TestRetryEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := Retry(ctx, fast, nil, func() (int, error) {
		calls++
		if calls == 3 {
			cancel()
		}
		return 0, &Error{Status: 503, Body: ErrorBody{Error: "busy"}}
	})
	if !errors.Is(err, context.Canceled) || err.Error() == context.Canceled.Error() {
		t.Fatalf("err %v: want the server's error and the cancel", err)
	}
	if calls != 3 {
		t.Fatalf("%d calls, want 3", calls)
	}
	if _, err := Retry(ctx, fast, nil, func() (int, error) { t.Fatal("called with a done context"); return 0, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

// The client reads Retry-After of a 503 (a 429 it waits out itself), and
// Retry waits as long as the server asked instead of its own backoff.
func TestRetryHonoursRetryAfter(t *testing.T) {
	var calls atomic.Int32
	var first time.Time
	var waited time.Duration
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":"restarting"}`, http.StatusServiceUnavailable)
			return
		}
		waited = time.Since(first)
		w.Write([]byte(`[]`))
	}))
	defer srv.Close()
	c := NewClient(srv.URL, "t")
	var asked time.Duration
	_, err := Retry(context.Background(), fast, func(err error, wait time.Duration) {
		var ae *Error
		if !errors.As(err, &ae) || ae.RetryAfter != time.Second {
			t.Errorf("notified %v, want a 503 with Retry-After 1s", err)
		}
		asked = wait
	}, func() ([]JobInfo, error) { return c.ListJobs(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	// The wait is the server's second, not the backoff's milliseconds.
	if asked != time.Second || waited < time.Second {
		t.Fatalf("waited %s (planned %s), want the 1s the server asked for", waited, asked)
	}
}

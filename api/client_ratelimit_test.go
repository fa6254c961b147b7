package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestClientRetriesRateLimited: a 429 with Retry-After is waited out and
// the request sent again, body and all; a 429 without Retry-After, or one
// asking for too long a wait, is the error ErrRateLimited at once.
func TestClientRetriesRateLimited(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		limited    int // answers of 429 before a 201
		wantCalls  int32
		wantErr    error
	}{
		{"retried", "0", 2, 3, nil},
		{"no Retry-After", "", 1, 1, ErrRateLimited},
		{"Retry-After too long", "3600", 1, 1, ErrRateLimited},
		{"gives up", "0", 100, rateRetries + 1, ErrRateLimited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := calls.Add(1)
				body, _ := io.ReadAll(r.Body)
				if !strings.Contains(string(body), `"name":"j"`) {
					t.Errorf("call %d: body %q was not sent again", n, body)
				}
				if int(n) <= tc.limited {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.WriteHeader(http.StatusTooManyRequests)
					io.WriteString(w, `{"error":"slow down","code":"rate_limited"}`)
					return
				}
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"revision":1}`)
			}))
			defer srv.Close()
			_, err := NewClient(srv.URL, "t").AddJob(context.Background(), &Job{Name: "j"})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if calls.Load() != tc.wantCalls {
				t.Fatalf("%d calls, want %d", calls.Load(), tc.wantCalls)
			}
		})
	}
}

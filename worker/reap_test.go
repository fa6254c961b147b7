package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// fakeExec counts reaps; it never gets a run (the fake server leases none).
type fakeExec struct{ reaps atomic.Int32 }

func (f *fakeExec) Run(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
	return sandbox.Result{}, nil
}
func (f *fakeExec) Forget(string) error                           { return nil }
func (f *fakeExec) ConsolePath(string) string                     { return "" }
func (f *fakeExec) Prewarm(context.Context, string) error         { return nil }
func (f *fakeExec) Reap(context.Context, func(string) bool) error { f.reaps.Add(1); return nil }

type noImages struct{}

func (noImages) Resolve(context.Context, string) (string, string, error) {
	return "", "", sandbox.ErrNotFound
}
func (noImages) Facts(context.Context) ([]api.ImageFact, error) { return nil, nil }

func TestReapAtStartAndOnATimer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // an empty long poll
		if r.URL.Path == "/v1/worker/heartbeat" {
			w.Write([]byte(`{}`))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	ex := &fakeExec{}
	w, err := New(Config{Client: api.NewClient(srv.URL, "t"), Exec: ex, Images: noImages{}, DataDir: t.TempDir(), ServerID: "5e5e5e5e00000000",
		ReapInterval: 50 * time.Millisecond, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n := ex.reaps.Load(); n < 3 {
		t.Fatalf("reaped %d times in 400ms with a 50ms interval; want the start-up reap and periodic ones", n)
	}
}

package worker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// runCounter counts runs and remembers what Reap was told to keep.
type runCounter struct {
	fakeExec
	runs atomic.Int32
}

func (f *runCounter) Run(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
	f.runs.Add(1)
	return sandbox.Result{}, nil
}

// A worker leased a run by a server other than the one it enrolled with
// (its URL now points elsewhere) runs nothing and stops with ErrWrongServer.
func TestRefusesAssignmentOfAnotherServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/worker/lease":
			json.NewEncoder(w).Encode(api.Assignment{ServerID: "0d0d0d0d00000000", RunID: "1", Fence: "f", Job: api.Job{Name: "j", Image: "busybox", Script: "true"}})
		default:
			w.Write([]byte(`{}`))
		}
	}))
	defer srv.Close()
	ex := &runCounter{}
	w, err := New(Config{Server: api.NewClient(srv.URL, "t"), Exec: ex, Images: noImages{}, DataDir: t.TempDir(),
		ServerID: "5e5e5e5e00000000", DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Run(ctx); !errors.Is(err, ErrWrongServer) {
		t.Fatalf("Run = %v, want ErrWrongServer", err)
	}
	if n := ex.runs.Load(); n != 0 {
		t.Fatalf("ran %d runs of another server", n)
	}
	if ctx.Err() != nil {
		t.Fatal("Run only returned at the test's deadline")
	}
}

// keepRecorder records what the start-up reap keeps.
type keepRecorder struct {
	fakeExec
	kept map[string]bool
}

func (f *keepRecorder) Reap(ctx context.Context, keep func(string) bool) error {
	if f.kept == nil && keep != nil {
		f.kept = map[string]bool{}
		for _, id := range []string{"1", "2"} {
			f.kept[id] = keep(id)
		}
	}
	return nil
}

func (f *keepRecorder) Run(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
	return sandbox.Result{}, errors.New("no sandbox")
}

// Lease records are per server: those of a server the data dir served
// before are dropped at start and protect nothing from the reap.
func TestLeaseRecordsOfAnotherServerDropped(t *testing.T) {
	dir := t.TempDir()
	write := func(server, run string) {
		p := filepath.Join(dir, "leases", server)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(api.Assignment{ServerID: server, RunID: run, Fence: "f", Attempt: 1, Job: api.Job{Name: "j", Image: "busybox", Script: "true"}})
		if err := os.WriteFile(filepath.Join(p, run+".json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0d0d0d0d00000000", "1") // server A's run 1, in flight when it died
	write("5e5e5e5e00000000", "2") // this server's run 2
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/worker/heartbeat" {
			w.Write([]byte(`{}`))
			return
		}
		time.Sleep(20 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	ex := &keepRecorder{}
	w, err := New(Config{Server: api.NewClient(srv.URL, "t"), Exec: ex, Images: noImages{}, DataDir: dir,
		ServerID: "5e5e5e5e00000000", DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if ex.kept["1"] || !ex.kept["2"] {
		t.Fatalf("start-up reap kept %v; want this server's run 2 only", ex.kept)
	}
	if _, err := os.Stat(filepath.Join(dir, "leases", "0d0d0d0d00000000")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the other server's lease records are still there: %v", err)
	}
}

package worker

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// hostileServer is a real HTTP server on 127.0.0.1 that leases one
// assignment (as raw JSON, so that it can say what no valid server would),
// then idles. It records results and console appends.
type hostileServer struct {
	*httptest.Server
	leases  atomic.Int32
	idle    chan struct{} // closed at the second lease: the first was handled
	mu      sync.Mutex
	results []api.ResultRequest
	console strings.Builder
}

func newHostileServer(t *testing.T, assignment map[string]any) *hostileServer {
	hs := &hostileServer{idle: make(chan struct{})}
	body, err := json.Marshal(assignment)
	if err != nil {
		t.Fatal(err)
	}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/worker/lease":
			switch hs.leases.Add(1) {
			case 1:
				w.Write(body)
				return
			case 2:
				close(hs.idle)
			}
			w.WriteHeader(http.StatusNoContent)
		case r.URL.Path == "/v1/worker/heartbeat":
			w.Write([]byte(`{}`))
		case strings.HasSuffix(r.URL.Path, "/log"):
			data, _ := io.ReadAll(r.Body)
			hs.mu.Lock()
			hs.console.Write(data)
			n := hs.console.Len()
			hs.mu.Unlock()
			json.NewEncoder(w).Encode(api.LogAppendResponse{Length: int64(n)})
		case strings.HasSuffix(r.URL.Path, "/result"):
			var req api.ResultRequest
			json.NewDecoder(r.Body).Decode(&req)
			hs.mu.Lock()
			hs.results = append(hs.results, req)
			hs.mu.Unlock()
			json.NewEncoder(w).Encode(api.Run{State: api.StateFailed})
		default:
			http.Error(w, `{"error":"no such route"}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// tree lists every file and directory under root, outside skip, with what
// would show a change.
func tree(t *testing.T, root, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fi.Mode().String() + " " + fi.ModTime().String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A hostile server cannot make the worker touch anything outside its data
// dir: the worker refuses each assignment below before using any of it,
// reports it failed when it can name the run, and logs why.
func TestHostileAssignmentsAreRefused(t *testing.T) {
	valid := func() map[string]any {
		return map[string]any{
			"run_id": "12", "server_id": testServerID, "fence": "abc", "attempt": 1,
			"job": map[string]any{"name": "j", "image": "busybox", "script": "true"},
		}
	}
	tests := []struct {
		name     string
		mutate   func(a map[string]any)
		reported bool // the run ID is sound, so the refusal is reported
	}{
		{"run id ..", func(a map[string]any) { a["run_id"] = ".." }, false},
		{"run id ../../..", func(a map[string]any) { a["run_id"] = "../../.." }, false},
		{"run id a/b", func(a map[string]any) { a["run_id"] = "a/b" }, false},
		{"empty run id", func(a map[string]any) { a["run_id"] = "" }, false},
		{"input sha256 ../../x", func(a map[string]any) {
			a["job"].(map[string]any)["inputs"] = []map[string]any{{"path": "src.tar", "sha256": "../../x"}}
		}, true},
		{"cwd /work/../etc", func(a map[string]any) { a["variations"] = map[string]string{"cwd": "/work/../etc"} }, true},
		{"300-character hostname", func(a map[string]any) {
			a["variations"] = map[string]string{"hostname": strings.Repeat("h", 300)}
		}, true},
		{"needed artifact ../../x", func(a map[string]any) {
			a["job"].(map[string]any)["needs"] = []map[string]any{{"job": "lib"}}
			a["needs"] = []map[string]any{{"job": "lib", "run": "3", "path": "../../x", "sha256": strings.Repeat("a", 64)}}
		}, true},
		{"needed artifact of a job not needed", func(a map[string]any) {
			a["needs"] = []map[string]any{{"job": "..", "run": "3", "path": "x", "sha256": strings.Repeat("a", 64)}}
		}, true},
		{"diffoscope file ../x", func(a map[string]any) {
			a["diffoscope"] = map[string]any{"group": "1", "run_a": "1", "run_b": "2",
				"files": []map[string]any{{"path": "../x", "sha256_a": strings.Repeat("a", 64)}}}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := valid()
			tt.mutate(a)
			hs := newHostileServer(t, a)

			// The data dir sits three levels down, with a file at each
			// level above it that a path escaping the data dir would hit.
			root := t.TempDir()
			dataDir := filepath.Join(root, "a", "b", "data")
			for _, d := range []string{root, filepath.Join(root, "a"), filepath.Join(root, "a", "b")} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "keep"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				t.Fatal(err)
			}
			before := tree(t, root, dataDir)

			var ran, forgot atomic.Int32
			ex := &fakeExec{consoles: filepath.Join(dataDir, "runs"),
				RunFunc: func(context.Context, sandbox.Request) (sandbox.Result, error) {
					ran.Add(1)
					return sandbox.Result{}, nil
				},
				ForgetFunc: func(string) error { forgot.Add(1); return nil }}
			w, logs := newTestWorker(t, api.NewClient(hs.URL, "kiln_worker_x"), ex, oneImage{}, func(c *Config) {
				c.DataDir = dataDir
				c.Hooks = map[string]sandbox.Hook{api.DiffoscopeHook: {Stage: sandbox.StagePost, Command: []string{"true"}}}
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			select {
			case <-hs.idle:
			case err := <-done:
				t.Fatalf("worker stopped: %v\n%s", err, logs)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}

			after := tree(t, root, dataDir)
			if !maps.Equal(before, after) {
				t.Fatalf("the worker changed files outside its data dir:\nbefore %v\nafter  %v", before, after)
			}
			if _, err := os.Stat(dataDir); err != nil {
				t.Fatalf("data dir: %v", err)
			}
			if ran.Load() != 0 || forgot.Load() != 0 {
				t.Fatalf("the executor was used: %d runs, %d forgets", ran.Load(), forgot.Load())
			}
			if !strings.Contains(logs.String(), "assignment refused") {
				t.Fatalf("no log line says the assignment was refused:\n%s", logs)
			}
			hs.mu.Lock()
			defer hs.mu.Unlock()
			switch {
			case !tt.reported && len(hs.results) != 0:
				t.Fatalf("a result was sent for an unnameable run: %+v", hs.results)
			case tt.reported && (len(hs.results) != 1 || !strings.Contains(hs.results[0].Error, "refused") || hs.results[0].ExitCode != -1):
				t.Fatalf("results %+v, want one failure saying the assignment was refused", hs.results)
			case tt.reported && !strings.Contains(hs.console.String(), "[kiln] the worker refused this assignment"):
				t.Fatalf("console %q lacks the refusal", hs.console.String())
			}
		})
	}
}

// A server identity that is not 16 lowercase hex digits (as a hostile or
// spoofed server might have sent at enroll) is refused before the worker
// joins it into a path: it does not start, and nothing outside its data
// dir is written or removed.
func TestHostileServerIDIsRefused(t *testing.T) {
	for _, id := range []string{"../../..", "../../etc", "/tmp", "..", "", "x\x00", strings.Repeat("0", 4096)} {
		t.Run(strings.ReplaceAll(id[:min(len(id), 20)], "/", "_"), func(t *testing.T) {
			hs := newHostileServer(t, map[string]any{
				"run_id": "12", "server_id": id, "fence": "abc", "attempt": 1,
				"job": map[string]any{"name": "j", "image": "busybox", "script": "true"},
			})
			root := t.TempDir()
			dataDir := filepath.Join(root, "a", "b", "data")
			for _, d := range []string{root, filepath.Join(root, "a"), filepath.Join(root, "a", "b"), filepath.Join(dataDir, "leases")} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "keep"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := tree(t, root, dataDir)
			ex := &fakeExec{consoles: filepath.Join(dataDir, "runs")}
			w, err := New(Config{Server: api.NewClient(hs.URL, "kiln_worker_x"), ServerID: id, Exec: ex, Images: oneImage{},
				DataDir: dataDir, Heartbeat: 5 * time.Millisecond, LeaseWait: time.Millisecond, Retry: fastRetry,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil {
				t.Errorf("a worker was made with server id %.40q", id)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- w.Run(ctx) }()
				select {
				case <-hs.idle:
				case <-done:
				}
				cancel()
				<-done
			}
			if after := tree(t, root, dataDir); !maps.Equal(before, after) {
				t.Fatalf("files outside the data dir changed:\nbefore %v\nafter  %v", before, after)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "leases", "keep")); err != nil {
				t.Fatalf("the data dir's lease records: %v", err)
			}
		})
	}
}

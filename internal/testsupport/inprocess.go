package testsupport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/scheduler"
)

// InProcessServer is a scheduler.Server in the test process behind an
// httptest server: quicker than StartServer's child process, and its
// store can be seeded in bulk (benchmarks).
type InProcessServer struct {
	*scheduler.Server
	URL        string
	DataDir    string
	AdminToken string
	Admin      *api.Client
}

// StartInProcessServer opens a server on a temp data dir (synchronous =
// normal) with extraConfig lines of server.toml applied, and serves it
// until the test ends.
func StartInProcessServer(t testing.TB, extraConfig ...string) *InProcessServer {
	t.Helper()
	cfg := config.DefaultServer()
	cfg.Synchronous = "normal"
	if _, err := toml.Decode(strings.Join(extraConfig, "\n"), cfg); err != nil {
		t.Fatalf("server config: %v", err)
	}
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := scheduler.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config.BaseContext = nil
	hs.Start()
	t.Cleanup(func() {
		cancel()
		hs.CloseClientConnections()
		hs.Close()
		srv.Close()
	})
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	s := &InProcessServer{Server: srv, URL: hs.URL, DataDir: cfg.DataDir, AdminToken: strings.TrimSpace(string(tok))}
	s.Admin = api.NewClient(s.URL, s.AdminToken)
	return s
}

// FakeWorker is an enrolled host driven by the test through the worker
// API: it leases runs and appends console bytes, uploads artifacts and
// reports results as the test says, with no sandbox.
type FakeWorker struct {
	t     testing.TB
	Name  string
	Facts api.Facts
	c     *api.Client

	mu  sync.Mutex
	off map[string]int64 // run -> console bytes appended
}

// DefaultFacts are the facts of a linux/amd64 host with one slot and
// images.
func DefaultFacts(images ...string) api.Facts {
	f := api.Facts{OS: "linux", Arch: "amd64", Slots: 1, FreeSlots: 1, Version: "test"}
	for _, im := range images {
		f.Images = append(f.Images, api.ImageFact{Name: im, Versions: []string{"1"}})
	}
	return f
}

// EnrollFakeWorker enrolls a host named name with facts through admin.
func EnrollFakeWorker(t testing.TB, serverURL string, admin *api.Client, name string, facts api.Facts) *FakeWorker {
	t.Helper()
	ctx := context.Background()
	tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.NewClient(serverURL, tok.Token).Enroll(ctx, api.EnrollRequest{Name: name, Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	return &FakeWorker{t: t, Name: resp.Name, Facts: facts, c: api.NewClient(serverURL, resp.Token), off: map[string]int64{}}
}

// Lease waits (up to a minute) for a run and leases it.
func (w *FakeWorker) Lease() *api.Assignment {
	w.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		a, err := w.c.Lease(context.Background(), api.LeaseRequest{Facts: w.Facts, Wait: api.Duration(5 * time.Second)})
		if err != nil {
			w.t.Fatalf("lease: %v", err)
		}
		if a != nil {
			return a
		}
	}
	w.t.Fatal("fake worker: no run to lease within a minute")
	return nil
}

// Log appends console bytes to the run, in pieces the server accepts.
func (w *FakeWorker) Log(a *api.Assignment, data []byte) {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		end, err := w.c.AppendLog(context.Background(), a.RunID, a.Fence, w.off[a.RunID], data[:n])
		if err != nil {
			w.t.Fatalf("append log: %v", err)
		}
		w.off[a.RunID] = end
		data = data[n:]
	}
}

// Artifact uploads content as an artifact of the run and returns its
// index entry for Finish.
func (w *FakeWorker) Artifact(a *api.Assignment, path string, content []byte) api.Artifact {
	w.t.Helper()
	sum := sha256.Sum256(content)
	sha := hex.EncodeToString(sum[:])
	if err := w.c.UploadArtifact(context.Background(), a.RunID, a.Fence, sha, bytes.NewReader(content), int64(len(content))); err != nil {
		w.t.Fatalf("upload artifact: %v", err)
	}
	return api.Artifact{Path: path, Size: int64(len(content)), Mode: 0o644, SHA256: sha}
}

// Finish reports the run's result.
func (w *FakeWorker) Finish(a *api.Assignment, res api.ResultRequest) *api.Run {
	w.t.Helper()
	res.Fence = a.Fence
	r, err := w.c.ReportResult(context.Background(), a.RunID, res)
	if err != nil {
		w.t.Fatalf("report result: %v", err)
	}
	return r
}

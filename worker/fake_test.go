package worker

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// fakeServer is a Server whose methods are func fields; a nil field
// answers as an idle server does (no run to lease, every call accepted).
type fakeServer struct {
	LeaseFunc          func(ctx context.Context, req api.LeaseRequest) (*api.Assignment, error)
	HeartbeatFunc      func(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error)
	AppendLogFunc      func(ctx context.Context, runID, fence string, offset int64, data []byte) (int64, error)
	UploadArtifactFunc func(ctx context.Context, runID, fence, sha string, r io.ReaderAt, size int64) error
	BlobReceivedFunc   func(ctx context.Context, sha string) (bool, int64, error)
	DownloadBlobFunc   func(ctx context.Context, sha string, w io.Writer) error
	ReportResultFunc   func(ctx context.Context, runID string, req api.ResultRequest) (*api.Run, error)
}

func (f *fakeServer) Lease(ctx context.Context, req api.LeaseRequest) (*api.Assignment, error) {
	if f.LeaseFunc != nil {
		return f.LeaseFunc(ctx, req)
	}
	return idleLease(ctx)
}

// idleLease is an empty long poll: it ends with ctx or after a moment.
func idleLease(ctx context.Context) (*api.Assignment, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(10 * time.Millisecond):
		return nil, nil
	}
}

func (f *fakeServer) Heartbeat(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	if f.HeartbeatFunc != nil {
		return f.HeartbeatFunc(ctx, req)
	}
	return &api.HeartbeatResponse{}, nil
}

func (f *fakeServer) AppendLog(ctx context.Context, runID, fence string, offset int64, data []byte) (int64, error) {
	if f.AppendLogFunc != nil {
		return f.AppendLogFunc(ctx, runID, fence, offset, data)
	}
	return offset + int64(len(data)), nil
}

func (f *fakeServer) UploadArtifact(ctx context.Context, runID, fence, sha string, r io.ReaderAt, size int64) error {
	if f.UploadArtifactFunc != nil {
		return f.UploadArtifactFunc(ctx, runID, fence, sha, r, size)
	}
	return nil
}

func (f *fakeServer) BlobReceived(ctx context.Context, sha string) (bool, int64, error) {
	if f.BlobReceivedFunc != nil {
		return f.BlobReceivedFunc(ctx, sha)
	}
	return false, 0, nil
}

func (f *fakeServer) DownloadBlob(ctx context.Context, sha string, w io.Writer) error {
	if f.DownloadBlobFunc != nil {
		return f.DownloadBlobFunc(ctx, sha, w)
	}
	return &api.Error{Status: 404}
}

func (f *fakeServer) ReportResult(ctx context.Context, runID string, req api.ResultRequest) (*api.Run, error) {
	if f.ReportResultFunc != nil {
		return f.ReportResultFunc(ctx, runID, req)
	}
	return &api.Run{ID: runID, State: api.StateSucceeded}, nil
}

// fakeExec is an Executor whose methods are func fields; a nil RunFunc
// succeeds at once, the others do nothing.
type fakeExec struct {
	RunFunc    func(ctx context.Context, req sandbox.Request) (sandbox.Result, error)
	ForgetFunc func(runID string) error
	ReapFunc   func(ctx context.Context, keep func(string) bool) error
	consoles   string // ConsolePath's directory
}

func (f *fakeExec) Run(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
	if f.RunFunc != nil {
		return f.RunFunc(ctx, req)
	}
	return sandbox.Result{}, nil
}

func (f *fakeExec) Forget(runID string) error {
	if f.ForgetFunc != nil {
		return f.ForgetFunc(runID)
	}
	return nil
}

func (f *fakeExec) ConsolePath(runID string) string {
	return filepath.Join(f.consoles, runID+".console")
}

func (f *fakeExec) Warm(context.Context, sandbox.Request) error { return nil }

func (f *fakeExec) Reap(ctx context.Context, keep func(string) bool) error {
	if f.ReapFunc != nil {
		return f.ReapFunc(ctx, keep)
	}
	return nil
}

// oneImage resolves every image to busybox@1 of the native arch.
type oneImage struct{}

func (oneImage) Resolve(context.Context, string) (string, string, error) {
	return "busybox@1", runtime.GOARCH, nil
}
func (oneImage) Facts(context.Context) ([]api.ImageFact, error) { return nil, nil }

type noImages struct{}

func (noImages) Resolve(context.Context, string) (string, string, error) {
	return "", "", errdefs.ErrNotFound
}
func (noImages) Facts(context.Context) ([]api.ImageFact, error) { return nil, nil }

// syncBuffer is a log sink tests read while the worker writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fastRetry keeps the tests' retries short.
var fastRetry = api.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}

// newTestWorker makes a worker on srv and ex with a log the test can read.
func newTestWorker(t *testing.T, srv Server, ex *fakeExec, images Images, mod func(*Config)) (*Worker, *syncBuffer) {
	t.Helper()
	if ex.consoles == "" {
		ex.consoles = t.TempDir()
	}
	logs := &syncBuffer{}
	cfg := Config{Server: srv, ServerID: testServerID, Exec: ex, Images: images, DataDir: t.TempDir(), Slots: 1,
		Heartbeat: 5 * time.Millisecond, LeaseWait: time.Millisecond, DrainTimeout: time.Minute,
		Retry: fastRetry, Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w, logs
}

// testServerID is the identity of the fake server the test workers enrolled with.
const testServerID = "5e5e5e5e00000000"

// job is a valid assignment of run id.
func job(id string) *api.Assignment {
	return &api.Assignment{RunID: id, ServerID: testServerID, Fence: "f-" + id, Attempt: 1,
		Job: api.Job{Name: "j", Image: "busybox", Script: "true"}}
}

// leaseOnce hands out a, once, then idles.
func leaseOnce(a *api.Assignment) func(context.Context, api.LeaseRequest) (*api.Assignment, error) {
	var once sync.Once
	return func(ctx context.Context, _ api.LeaseRequest) (*api.Assignment, error) {
		var out *api.Assignment
		once.Do(func() { out = a })
		if out != nil {
			return out, nil
		}
		return idleLease(ctx)
	}
}

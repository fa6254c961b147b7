package worker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/kiln-build/kiln/api"
)

// Server is what a worker uses of the kiln server; *api.Client is the
// real one, and tests use a fake.
//
// Every method makes one try and ends when ctx does. An error the server
// answered is an *api.Error, classified by api.Permanent: a fence the
// server no longer honours wraps api.ErrStaleFence, a host that was
// removed (or whose credential was revoked) api.ErrUnauthorized. A call
// carrying a fence is idempotent for it: repeating a log append, an upload
// or a result the server already took is harmless, so a lost answer can
// be retried. Safe for concurrent use.
type Server interface {
	// Lease long-polls for one run: (nil, nil) when none came within
	// req.Wait.
	Lease(ctx context.Context, req api.LeaseRequest) (*api.Assignment, error)
	// Heartbeat renews the leases named in req and says which runs to
	// cancel and which are no longer this worker's.
	Heartbeat(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error)
	// AppendLog appends console bytes at offset and returns the server's
	// log length; a gap is a 409 that api.LogResumeOffset reads.
	AppendLog(ctx context.Context, runID, fence string, offset int64, data []byte) (int64, error)
	// UploadArtifact stores size bytes of r (sha256 sha) for the run,
	// resuming what the server already holds.
	UploadArtifact(ctx context.Context, runID, fence, sha string, r io.ReaderAt, size int64) error
	// BlobReceived tells whether a blob is stored, and its size if so.
	BlobReceived(ctx context.Context, sha string) (complete bool, received int64, err error)
	// DownloadBlob writes the blob to w; it may have written part of it
	// when it fails.
	DownloadBlob(ctx context.Context, sha string, w io.Writer) error
	// ReportResult completes the run.
	ReportResult(ctx context.Context, runID string, req api.ResultRequest) (*api.Run, error)
}

var _ Server = (*api.Client)(nil)

// retrying is the Server the worker's code talks to, shaped like restic's
// retry backend: each call is retried with api.Retry (with backoff, until
// the call's ctx ends) unless api.Permanent says it cannot succeed.
// Heartbeat is tried once, as the next tick is its retry and a late
// heartbeat renews nothing; DownloadBlob too, as the bytes it wrote
// cannot be taken back (the caller retries into a fresh file). Every
// api.ErrUnauthorized is handed to removed: the host is gone, and nothing
// it sends will be taken again.
type retrying struct {
	Server
	backoff api.Backoff
	log     *slog.Logger
	removed func(error)
}

func (r retrying) check(err error) error {
	if errors.Is(err, api.ErrUnauthorized) {
		r.removed(err)
	}
	return err
}

func retryCall[T any](ctx context.Context, r retrying, what string, op func() (T, error)) (T, error) {
	v, err := api.Retry(ctx, r.backoff, func(err error, wait time.Duration) {
		r.log.Warn(what, "err", err, "retry_in", wait.Round(time.Millisecond))
	}, op)
	return v, r.check(err)
}

func (r retrying) Lease(ctx context.Context, req api.LeaseRequest) (*api.Assignment, error) {
	return retryCall(ctx, r, "lease", func() (*api.Assignment, error) { return r.Server.Lease(ctx, req) })
}

func (r retrying) Heartbeat(ctx context.Context, req api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	resp, err := r.Server.Heartbeat(ctx, req)
	return resp, r.check(err)
}

func (r retrying) AppendLog(ctx context.Context, runID, fence string, offset int64, data []byte) (int64, error) {
	return retryCall(ctx, r, "ship console", func() (int64, error) {
		return r.Server.AppendLog(ctx, runID, fence, offset, data)
	})
}

func (r retrying) UploadArtifact(ctx context.Context, runID, fence, sha string, rd io.ReaderAt, size int64) error {
	_, err := retryCall(ctx, r, "upload artifact", func() (struct{}, error) {
		return struct{}{}, r.Server.UploadArtifact(ctx, runID, fence, sha, rd, size)
	})
	return err
}

func (r retrying) BlobReceived(ctx context.Context, sha string) (bool, int64, error) {
	type answer struct {
		complete bool
		received int64
	}
	a, err := retryCall(ctx, r, "blob status", func() (answer, error) {
		c, n, err := r.Server.BlobReceived(ctx, sha)
		return answer{c, n}, err
	})
	return a.complete, a.received, err
}

func (r retrying) DownloadBlob(ctx context.Context, sha string, w io.Writer) error {
	return r.check(r.Server.DownloadBlob(ctx, sha, w))
}

func (r retrying) ReportResult(ctx context.Context, runID string, req api.ResultRequest) (*api.Run, error) {
	return retryCall(ctx, r, "report result", func() (*api.Run, error) { return r.Server.ReportResult(ctx, runID, req) })
}

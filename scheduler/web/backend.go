package web

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
)

// Viewer is whoever a page is rendered for, as the Backend resolved it:
// a client or admin token, or the anonymous reader of a public server.
// The web view hands it back to every Backend call, which decides what it
// may see.
type Viewer interface {
	// Name is shown in the page header: the token's name, "admin", or ""
	// for the anonymous reader.
	Name() string
	// Anonymous reports the reader without a token (public mode). It may
	// read but never write.
	Anonymous() bool
	// Admin reports an admin token (hosts page, drain).
	Admin() bool
	// MayChange reports whether it may change what owner owns (cancel its
	// runs, execute its jobs), so that a page offers only writes that work.
	MayChange(owner string) bool
}

// RunQuery filters the run list, newest first. Empty fields do not filter.
type RunQuery struct {
	Job    string
	Host   string
	States []string
	Group  string
	Before string // only runs older than this run ID (paging)
	Limit  int
}

// LogChunk is one read of a run's console (see the log API).
type LogChunk struct {
	Data       []byte
	Attempt    int   // the attempt the bytes belong to
	Size       int64 // stored bytes of that attempt
	State      string
	RunAttempt int // the run's current attempt
	Truncated  bool
}

// Revision is one stored revision of a job.
type Revision struct {
	Revision int
	Created  time.Time
	Job      api.Job
}

// JobStats counts a job's ended runs.
type JobStats struct {
	Ended, Succeeded int
}

// Backend is what the web view reads and writes. The scheduler implements
// it with the same queries as its API, and every call takes the Viewer so
// that visibility is decided in one place there. Errors that carry an
// HTTPStatus() int method are shown with that status (404, 403, 409...).
type Backend interface {
	// Authenticate resolves a client or admin token; any other kind, or an
	// unknown, revoked or expired token, is an error.
	Authenticate(ctx context.Context, token string) (Viewer, error)
	// Anonymous is the reader of a public server.
	Anonymous() Viewer
	// Throttle is how long v must wait before its next request (0: go
	// on): a token's pages count against its API rate limit.
	Throttle(v Viewer) time.Duration

	Runs(ctx context.Context, v Viewer, q RunQuery) ([]api.Run, error)
	// Run is one run with its artifacts.
	Run(ctx context.Context, v Viewer, id string) (*api.Run, error)
	// WaitReason says why a queued run has not been leased ("" when the
	// server cannot tell or the run is not queued).
	WaitReason(ctx context.Context, v Viewer, r *api.Run) (string, error)
	// ReadLog reads at most limit console bytes of attempt (0: current)
	// from offset, long-polling up to wait while there are none yet and
	// the run is live.
	ReadLog(ctx context.Context, v Viewer, id string, attempt int, offset int64, limit int, wait time.Duration) (*LogChunk, error)
	// ScanLog calls fn with the stored console bytes of attempt (0:
	// current) from offset on, in order, until they end or fn returns an
	// error (which ScanLog returns). fn must not keep data.
	ScanLog(ctx context.Context, v Viewer, id string, attempt int, offset int64, fn func(data []byte) error) error

	Jobs(ctx context.Context, v Viewer) ([]api.JobInfo, error)
	Job(ctx context.Context, v Viewer, name string) (*api.JobInfo, error)
	// Revisions are the job's stored revisions, newest first.
	Revisions(ctx context.Context, v Viewer, name string) ([]Revision, error)
	JobStats(ctx context.Context, v Viewer, name string) (JobStats, error)

	// Hosts needs an admin Viewer.
	Hosts(ctx context.Context, v Viewer) ([]api.Host, error)
	Group(ctx context.Context, v Viewer, id string) (*api.Group, error)
	FindArtifacts(ctx context.Context, v Viewer, sha256 string) ([]api.ArtifactRef, error)
	// Attestation is the signed provenance of a run (a DSSE envelope,
	// docs/publishing.md) and the host that signed it; an error with
	// status 404 when the run has none.
	Attestation(ctx context.Context, v Viewer, run string) (host string, envelope []byte, err error)
	// OpenArtifact opens the content of one artifact of a run.
	OpenArtifact(ctx context.Context, v Viewer, run, path string) (io.ReadSeekCloser, *api.Artifact, error)

	CancelRun(ctx context.Context, v Viewer, id string) error
	// ExecuteJob queues a run of the job and returns it.
	ExecuteJob(ctx context.Context, v Viewer, name string) (*api.Run, error)
	DrainHost(ctx context.Context, v Viewer, name string) error
}

// Errors of the web layer itself; backend errors keep their own status.
var (
	errNotFound  = statusError{http.StatusNotFound, "not found"}
	errForbidden = statusError{http.StatusForbidden, "forbidden: this needs a token that may do it; log in"}
	errBadCSRF   = statusError{http.StatusForbidden, "the form is stale or came from another site; reload the page and try again"}
)

type statusError struct {
	status int
	msg    string
}

func (e statusError) Error() string   { return e.msg }
func (e statusError) HTTPStatus() int { return e.status }

// httpStatus is the status an error is answered with.
func httpStatus(err error) int {
	var se interface{ HTTPStatus() int }
	if errors.As(err, &se) {
		return se.HTTPStatus()
	}
	return http.StatusInternalServerError
}

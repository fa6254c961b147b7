package api

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Permanent reports whether sending the same request again cannot succeed,
// so that retrying would only repeat the failure. It is the one
// classification every retry of kiln's API calls uses:
//
//   - permanent: the server refused the request itself (400, 404, 413, and
//     any other 4xx not named below), the caller's credential (401: the
//     host was removed or the token revoked; 403), or the caller's lease
//     (409 stale fence, and any 409 but a blob offset). A 409 log_offset
//     is permanent too: the same append would meet the same gap, and the
//     caller must resend from the length the answer carries
//     (LogResumeOffset). A local file error (*fs.PathError) is permanent;
//   - transient: a connection that failed or broke, a 5xx, 429 (too many
//     requests), 408, and a 409 blob_offset, as an upload asks the server
//     what it holds before each try.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	var ae *Error
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusRequestTimeout, ae.Status == http.StatusTooManyRequests, ae.Status >= 500:
			return false
		case ae.Status == http.StatusConflict:
			return ae.Body.Code != CodeBlobOffset
		}
		return ae.Status >= 400
	}
	var pe *fs.PathError
	return errors.As(err, &pe)
}

// RetryAfter is how long the server asked the caller to wait (429 or 503
// with a Retry-After header), capped at maxRetryAfter so that a wrong
// header cannot park a caller for hours.
func RetryAfter(err error) (time.Duration, bool) {
	var ae *Error
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return min(ae.RetryAfter, maxRetryAfter), true
	}
	return 0, false
}

// Backoff says how Retry waits between tries: exponentially (doubling)
// from Initial up to Max, each wait jittered by ±50% so that many workers
// that lost the server at once do not come back at once; MaxElapsed bounds
// the whole (0: until the context ends).
type Backoff struct {
	Initial, Max, MaxElapsed time.Duration
}

// Backoffs of kiln's callers.
var (
	// WorkerBackoff: a worker retries until its context (which bounds
	// each operation) ends.
	WorkerBackoff = Backoff{Initial: time.Second, Max: 30 * time.Second}
	// CLIBackoff: a command a person waits on rides out a server restart,
	// then says what failed.
	CLIBackoff = Backoff{Initial: 500 * time.Millisecond, Max: 5 * time.Second, MaxElapsed: time.Minute}
)

// Retry calls op until it succeeds, fails with an error that Permanent
// classifies as permanent, ctx ends or b.MaxElapsed has passed, and returns
// op's last result and error (joined with ctx's cause when ctx ended). A
// server's Retry-After replaces the backoff's wait. notify, when not nil,
// is told of each failure that will be retried and of the wait before the
// next try. With ctx already done, op is not called at all.
func Retry[T any](ctx context.Context, b Backoff, notify func(err error, wait time.Duration), op func() (T, error)) (T, error) {
	var zero T
	if err := context.Cause(ctx); err != nil {
		return zero, err
	}
	var last error
	eb := &backoff.ExponentialBackOff{
		InitialInterval:     b.Initial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         b.Max,
	}
	res, err := backoff.Retry(ctx, func() (T, error) {
		v, err := op()
		last = err
		switch {
		case err == nil:
			return v, nil
		case Permanent(err):
			return v, backoff.Permanent(err)
		}
		if d, ok := RetryAfter(err); ok {
			return v, &backoff.RetryAfterError{Duration: d}
		}
		return v, err
	},
		backoff.WithBackOff(eb),
		backoff.WithMaxElapsedTime(b.MaxElapsed),
		backoff.WithNotify(func(_ error, wait time.Duration) {
			if notify != nil {
				notify(last, wait)
			}
		}))
	if err == nil || last == nil {
		return res, err
	}
	// backoff answers a cancelled wait with ctx's cause and a Retry-After
	// with its own error; the caller wants what the server said.
	if cause := context.Cause(ctx); cause != nil && !errors.Is(last, cause) {
		return res, errors.Join(last, cause)
	}
	return res, last
}

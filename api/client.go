package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Sentinel kinds of API errors, checked with errors.Is on an *Error.
var (
	ErrBadRequest   = errors.New("bad request")
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrTooLarge     = errors.New("too large")
	// ErrRateLimited: the token is over the server's rate limit (429),
	// still after the client waited as told and retried.
	ErrRateLimited = errors.New("rate limited")
	// ErrQueueFull: the job's owner has its max_queued runs queued (429,
	// CodeQueueFull); retrying helps only once some of them have run.
	ErrQueueFull = errors.New("queue full")
	// ErrStaleFence: the lease moved on; the worker must drop the run.
	ErrStaleFence = errors.New("stale fence")
)

// Error is a failed API call.
type Error struct {
	Status int
	Body   ErrorBody
	// RetryAfter is the wait the server asked for (429 or 503 with a
	// Retry-After header); 0 when it named none.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Body.Error != "" {
		return e.Body.Error
	}
	return http.StatusText(e.Status)
}

// Unwrap maps the answer to a sentinel kind.
func (e *Error) Unwrap() error {
	switch e.Body.Code {
	case CodeStaleFence:
		return ErrStaleFence
	case CodeQueueFull:
		return ErrQueueFull
	}
	switch e.Status {
	case http.StatusBadRequest:
		return ErrBadRequest
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	case http.StatusTooManyRequests:
		return ErrRateLimited
	}
	return nil
}

// Client talks to a kiln server. It is safe for concurrent use; every
// method's ctx bounds the whole request including reading the answer.
// Methods make one try, except UploadBlob, UploadFile and FollowLog, which
// a person waits on and which retry transient failures (see Retry).
type Client struct {
	// BaseURL is the server, e.g. "https://kiln.example:8420", or several
	// replicas of one farm separated by commas: a request that cannot
	// reach one (connection refused, no route, DNS) goes to the next, and
	// later requests stick to the one that answered.
	BaseURL string
	Token   string
	HTTP    *http.Client // nil: a client without an overall timeout (long polls)

	cur atomic.Int64 // index in BaseURL's addresses of the one in use
}

// NewClient returns a client for base (one address or a comma-separated
// list) with token.
func NewClient(base, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(base, "/"), Token: token}
}

// Addresses splits a comma-separated server list, dropping empty items
// and trailing slashes.
func Addresses(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimRight(strings.TrimSpace(a), "/"); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// base returns the address in use and its index.
func (c *Client) base() (string, int) {
	addrs := Addresses(c.BaseURL)
	if len(addrs) == 0 {
		return "", 0
	}
	i := int(c.cur.Load()) % len(addrs)
	return addrs[i], i
}

// ErrUnreachable: the server could not be reached at all (refused, no
// route, DNS): retrying later may help, the request itself was fine.
var ErrUnreachable = errors.New("server unreachable")

// Retries of a request answered 429: at most rateRetries, each after the
// answer's Retry-After (at most maxRetryAfter; a longer one is returned as
// the error at once, as is a 429 without Retry-After).
const (
	rateRetries   = 5
	maxRetryAfter = time.Minute
)

// send does the request, naming the server when it cannot be reached. A
// 429 answer is retried after its Retry-After when the body can be sent
// again (req.GetBody, set by http.NewRequest for in-memory bodies).
func (c *Client) send(req *http.Request) (*http.Response, error) {
	failed := 0 // addresses that could not be reached, in a row
	for attempt := 0; ; attempt++ {
		resp, err := c.httpClient().Do(req)
		var op *net.OpError
		if err != nil && errors.As(err, &op) && op.Op == "dial" {
			base, i := c.base()
			addrs := Addresses(c.BaseURL)
			failed++
			replay := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
			if failed >= len(addrs) || !replay {
				return nil, fmt.Errorf("cannot reach the kiln server at %s (%v): %w", c.BaseURL, op.Err, ErrUnreachable)
			}
			// Fail over: the next address, for this request and the
			// ones after it.
			next := (i + 1) % len(addrs)
			c.cur.CompareAndSwap(int64(i), int64(next))
			u, perr := url.Parse(addrs[next] + strings.TrimPrefix(req.URL.String(), base))
			if perr != nil {
				return nil, perr
			}
			req.URL, req.Host = u, ""
			if req.GetBody != nil {
				body, berr := req.GetBody()
				if berr != nil {
					return nil, berr
				}
				req.Body = body
			}
			continue
		}
		if err != nil || resp.StatusCode != http.StatusTooManyRequests || attempt >= rateRetries {
			return resp, err
		}
		wait, ok := retryAfter(resp.Header.Get("Retry-After"))
		replay := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
		if !ok || wait > maxRetryAfter || !replay {
			return resp, nil
		}
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return resp, nil
			}
			req.Body = body
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-req.Context().Done():
			t.Stop()
			return nil, req.Context().Err()
		}
	}
}

// retryAfterHeader is the answer's Retry-After, 0 when it has none.
func retryAfterHeader(resp *http.Response) time.Duration {
	d, _ := retryAfter(resp.Header.Get("Retry-After"))
	return d
}

// retryAfter parses a Retry-After header in seconds (the form the kiln
// server sends) or as an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	base, _ := c.base()
	u := base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// do sends a request and decodes a JSON answer into out (if non-nil). A
// 204 leaves out untouched and returns (false, nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) (bool, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return false, err
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return false, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return false, err
	}
	if resp.StatusCode == http.StatusNoContent {
		return false, nil
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return false, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return true, nil
}

func checkResponse(resp *http.Response) error {
	if resp.StatusCode < 300 {
		return nil
	}
	e := &Error{Status: resp.StatusCode, RetryAfter: retryAfterHeader(resp)}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e.Body) != nil || e.Body.Error == "" {
		e.Body.Error = strings.TrimSpace(resp.Status + ": " + string(b))
	}
	return e
}

func esc(s string) string { return url.PathEscape(s) }

// AddJob stores a new job; a taken name is ErrConflict.
func (c *Client) AddJob(ctx context.Context, j *Job) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "POST", "/v1/jobs", nil, j, &out)
	return &out, err
}

// ModifyJob stores j as a new revision of job name.
func (c *Client) ModifyJob(ctx context.Context, name string, j *Job) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "PUT", "/v1/jobs/"+esc(name), nil, j, &out)
	return &out, err
}

// RemoveJob deletes a job; its queued runs are cancelled, past runs stay.
func (c *Client) RemoveJob(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/v1/jobs/"+esc(name), nil, nil, nil)
	return err
}

// ListJobs lists the stored jobs by name.
func (c *Client) ListJobs(ctx context.Context) ([]JobInfo, error) {
	var out []JobInfo
	_, err := c.do(ctx, "GET", "/v1/jobs", nil, nil, &out)
	return out, err
}

// GetJob returns one job.
func (c *Client) GetJob(ctx context.Context, name string) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "GET", "/v1/jobs/"+esc(name), nil, nil, &out)
	return &out, err
}

// ScheduleJob sets the job's schedule; a bad spec is ErrBadRequest.
func (c *Client) ScheduleJob(ctx context.Context, name, spec string) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "PUT", "/v1/jobs/"+esc(name)+"/schedule", nil, ScheduleRequest{Schedule: spec}, &out)
	return &out, err
}

// UnscheduleJob clears the job's schedule.
func (c *Client) UnscheduleJob(ctx context.Context, name string) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "DELETE", "/v1/jobs/"+esc(name)+"/schedule", nil, nil, &out)
	return &out, err
}

// ListRuns lists runs newest first, of one job when job != "". limit <= 0
// means the server's default.
func (c *Client) ListRuns(ctx context.Context, job string, limit int) ([]Run, error) {
	q := url.Values{}
	if job != "" {
		q.Set("job", job)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []Run
	_, err := c.do(ctx, "GET", "/v1/runs", q, nil, &out)
	return out, err
}

// GetRun returns one run with its artifact index.
func (c *Client) GetRun(ctx context.Context, id string) (*Run, error) {
	var out Run
	_, err := c.do(ctx, "GET", "/v1/runs/"+esc(id), nil, nil, &out)
	return &out, err
}

// CancelRun cancels a queued run at once, a leased one through its worker.
func (c *Client) CancelRun(ctx context.Context, id string) (*Run, error) {
	var out Run
	_, err := c.do(ctx, "POST", "/v1/runs/"+esc(id)+"/cancel", nil, nil, &out)
	return &out, err
}

// ListArtifacts returns a run's artifact index.
func (c *Client) ListArtifacts(ctx context.Context, id string) ([]Artifact, error) {
	var out []Artifact
	_, err := c.do(ctx, "GET", "/v1/runs/"+esc(id)+"/artifacts", nil, nil, &out)
	return out, err
}

// LogChunk is one read of a run's stored console.
type LogChunk struct {
	Data       []byte
	Attempt    int    // attempt the data belongs to
	Size       int64  // stored bytes of that attempt's log
	RunState   string // run state at the time of the read
	RunAttempt int    // the run's current attempt
	Truncated  bool
}

// ReadLog reads attempt's console from offset, waiting up to wait for new
// bytes when there are none yet. attempt 0 means the run's current attempt.
func (c *Client) ReadLog(ctx context.Context, id string, attempt int, offset int64, wait time.Duration) (*LogChunk, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if attempt > 0 {
		q.Set("attempt", strconv.Itoa(attempt))
	}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	req, err := c.newRequest(ctx, "GET", "/v1/runs/"+esc(id)+"/log", q, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	h := resp.Header
	lc := &LogChunk{Data: data, RunState: h.Get(HeaderRunState), Truncated: h.Get(HeaderTruncated) == "1"}
	lc.Attempt, _ = strconv.Atoi(h.Get(HeaderLogAttempt))
	lc.RunAttempt, _ = strconv.Atoi(h.Get(HeaderRunAttempt))
	lc.Size, _ = strconv.ParseInt(h.Get(HeaderLogSize), 10, 64)
	return lc, nil
}

// FollowLog copies a run's console to w as it is written, attempt after
// attempt, until the run ends and all of its log is read; it returns the
// final run. It reads the stored log by offset, so it never misses bytes
// however slow w is. A read that fails for a transient reason (the server
// restarting, say) is retried with CLIBackoff.
func (c *Client) FollowLog(ctx context.Context, id string, w io.Writer) (*Run, error) {
	attempt, offset := 0, int64(0)
	for {
		lc, err := Retry(ctx, CLIBackoff, nil, func() (*LogChunk, error) {
			return c.ReadLog(ctx, id, attempt, offset, 30*time.Second)
		})
		if err != nil {
			return nil, err
		}
		if attempt == 0 {
			attempt = lc.Attempt
		}
		if len(lc.Data) > 0 {
			if _, err := w.Write(lc.Data); err != nil {
				return nil, err
			}
			offset += int64(len(lc.Data))
			continue
		}
		if offset < lc.Size {
			continue
		}
		if lc.RunAttempt > attempt {
			fmt.Fprintf(w, "\n--- kiln: attempt %d lost its host; attempt %d follows ---\n", attempt, attempt+1)
			attempt, offset = attempt+1, 0
			continue
		}
		if Terminal(lc.RunState) {
			return c.GetRun(ctx, id)
		}
	}
}

// HashFile returns the sha256 (lowercase hex) and size of a file.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// BlobReceived tells whether the blob is stored (and readable with this
// token), and else how many bytes of this token's own partial upload the
// server holds.
func (c *Client) BlobReceived(ctx context.Context, sha string) (complete bool, received int64, err error) {
	return c.headBlob(ctx, "/v1/blobs/"+esc(sha), nil)
}

func (c *Client) headBlob(ctx context.Context, path string, q url.Values) (bool, int64, error) {
	req, err := c.newRequest(ctx, "HEAD", path, q, nil)
	if err != nil {
		return false, 0, err
	}
	resp, err := c.send(req)
	if err != nil {
		return false, 0, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, resp.ContentLength, nil
	case http.StatusNotFound:
		n, _ := strconv.ParseInt(resp.Header.Get(HeaderReceived), 10, 64)
		return false, n, nil
	case http.StatusConflict:
		// A HEAD answer has no body: 409 on a worker route is a stale fence.
		return false, 0, &Error{Status: resp.StatusCode, Body: ErrorBody{Error: "HEAD " + path + ": lease no longer held", Code: CodeStaleFence}}
	}
	return false, 0, &Error{Status: resp.StatusCode, Body: ErrorBody{Error: "HEAD " + path + ": " + resp.Status},
		RetryAfter: retryAfterHeader(resp)}
}

// UploadBlob stores size bytes of r (whose sha256 is sha) as an input blob,
// resuming a partial upload the server already holds, and retries a
// transient failure with CLIBackoff. Idempotent.
func (c *Client) UploadBlob(ctx context.Context, sha string, r io.ReaderAt, size int64) error {
	_, err := Retry(ctx, CLIBackoff, nil, func() (struct{}, error) {
		return struct{}{}, c.uploadBlob(ctx, "/v1/blobs/"+esc(sha), url.Values{}, r, size)
	})
	return err
}

// UploadFile uploads a file as a blob and returns its sha256.
func (c *Client) UploadFile(ctx context.Context, path string) (string, error) {
	sha, size, err := HashFile(path)
	if err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return sha, c.UploadBlob(ctx, sha, f, size)
}

// uploadBlob makes one try: it asks how much of the blob the server holds,
// then sends the rest. An answer that says where to resume is followed at
// once, a few times at most, as part of the upload protocol: a 409
// blob_offset carries the server's length (another session of this
// uploader moved it), a blob_digest to a resumed upload means what the
// server held was not this blob's and was discarded, so the whole blob is
// sent. What is left after that is transient for a blob_offset (see
// Permanent: the next try asks again) and permanent otherwise.
func (c *Client) uploadBlob(ctx context.Context, path string, q url.Values, r io.ReaderAt, size int64) error {
	complete, got, err := c.headBlob(ctx, path, q)
	if err != nil || complete {
		return err
	}
	for range 3 {
		if got > size {
			got = 0
		}
		err = c.putBlob(ctx, path, q, r, got, size)
		var ae *Error
		switch {
		case errors.As(err, &ae) && ae.Body.Code == CodeBlobOffset && ae.Body.Length != nil:
			got = *ae.Body.Length
		case got > 0 && errors.As(err, &ae) && ae.Body.Code == CodeBlobDigest:
			got = 0
		default:
			return err
		}
	}
	return err
}

// putBlob sends bytes [off, size) of r.
func (c *Client) putBlob(ctx context.Context, path string, q url.Values, r io.ReaderAt, off, size int64) error {
	qq := url.Values{}
	for k, v := range q {
		qq[k] = v
	}
	qq.Set("offset", strconv.FormatInt(off, 10))
	qq.Set("size", strconv.FormatInt(size, 10))
	req, err := c.newRequest(ctx, "PUT", path, qq, io.NewSectionReader(r, off, size-off))
	if err != nil {
		return err
	}
	// send replays the body after a 429.
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(r, off, size-off)), nil }
	req.ContentLength = size - off
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return checkResponse(resp)
}

// DownloadBlob writes the blob to w and verifies its sha256.
func (c *Client) DownloadBlob(ctx context.Context, sha string, w io.Writer) error {
	req, err := c.newRequest(ctx, "GET", "/v1/blobs/"+esc(sha), nil, nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h), resp.Body); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("blob %s: downloaded data has sha256 %s", sha, got)
	}
	return nil
}

// CreateEnrollmentToken makes a single-use token for `kiln worker enroll`.
func (c *Client) CreateEnrollmentToken(ctx context.Context, req EnrollmentTokenRequest) (*EnrollmentToken, error) {
	var out EnrollmentToken
	_, err := c.do(ctx, "POST", "/v1/hosts/tokens", nil, req, &out)
	return &out, err
}

// ListHosts lists the enrolled hosts.
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	var out []Host
	_, err := c.do(ctx, "GET", "/v1/hosts", nil, nil, &out)
	return out, err
}

// DrainHost stops giving the host new runs.
func (c *Client) DrainHost(ctx context.Context, name string) (*Host, error) {
	var out Host
	_, err := c.do(ctx, "POST", "/v1/hosts/"+esc(name)+"/drain", nil, nil, &out)
	return &out, err
}

// RemoveHost revokes the host's credential and requeues its runs.
func (c *Client) RemoveHost(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/v1/hosts/"+esc(name), nil, nil, nil)
	return err
}

// Enroll trades the client's enrollment token for a worker credential.
// The caller must store EnrollResponse.Token; it is shown only once.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (*EnrollResponse, error) {
	var out EnrollResponse
	_, err := c.do(ctx, "POST", "/v1/enroll", nil, req, &out)
	return &out, err
}

// Heartbeat refreshes facts and renews the leases held.
func (c *Client) Heartbeat(ctx context.Context, req HeartbeatRequest) (*HeartbeatResponse, error) {
	var out HeartbeatResponse
	_, err := c.do(ctx, "POST", "/v1/worker/heartbeat", nil, req, &out)
	return &out, err
}

// Lease long-polls for one run. It returns (nil, nil) when none came
// within req.Wait.
func (c *Client) Lease(ctx context.Context, req LeaseRequest) (*Assignment, error) {
	var out Assignment
	ok, err := c.do(ctx, "POST", "/v1/worker/lease", nil, req, &out)
	if err != nil || !ok {
		return nil, err
	}
	return &out, nil
}

// AppendLog appends console bytes of the leased attempt at offset (every
// lease starts at 0) and returns the server's log length after it. Bytes
// the server already has are skipped, so repeating an append is harmless
// and an empty append at offset 0 just returns the length. On a gap the
// error is an *Error whose Body.Length is the server's length (see
// LogResumeOffset); a stale fence is ErrStaleFence.
func (c *Client) AppendLog(ctx context.Context, runID, fence string, offset int64, data []byte) (int64, error) {
	q := url.Values{"fence": {fence}, "offset": {strconv.FormatInt(offset, 10)}}
	req, err := c.newRequest(ctx, "POST", "/v1/worker/runs/"+esc(runID)+"/log", q, bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return 0, err
	}
	var out LogAppendResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	return out.Length, nil
}

// LogResumeOffset extracts the server's log length from an AppendLog
// offset error, to resume shipping from there.
func LogResumeOffset(err error) (int64, bool) {
	var ae *Error
	if errors.As(err, &ae) && ae.Body.Code == CodeLogOffset && ae.Body.Length != nil {
		return *ae.Body.Length, true
	}
	return 0, false
}

// ArtifactReceived is BlobReceived on a worker route: whether the blob is
// stored, and else how many bytes of this worker's own partial upload the
// server holds.
func (c *Client) ArtifactReceived(ctx context.Context, runID, fence, sha string) (complete bool, received int64, err error) {
	return c.headBlob(ctx, "/v1/worker/runs/"+esc(runID)+"/blobs/"+esc(sha), url.Values{"fence": {fence}})
}

// UploadArtifact makes one try at uploading an artifact blob of a leased
// run, resuming a partial upload. A stale fence is ErrStaleFence.
func (c *Client) UploadArtifact(ctx context.Context, runID, fence, sha string, r io.ReaderAt, size int64) error {
	return c.uploadBlob(ctx, "/v1/worker/runs/"+esc(runID)+"/blobs/"+esc(sha), url.Values{"fence": {fence}}, r, size)
}

// ReportResult completes the run. A stale fence is ErrStaleFence; repeating
// an accepted report returns the stored run.
func (c *Client) ReportResult(ctx context.Context, runID string, req ResultRequest) (*Run, error) {
	var out Run
	_, err := c.do(ctx, "POST", "/v1/worker/runs/"+esc(runID)+"/result", nil, req, &out)
	return &out, err
}

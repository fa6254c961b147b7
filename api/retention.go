package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Retention is a [retention] table (server.toml, and a job file's own):
// which finished runs the server keeps. A run is kept if either rule
// keeps it; with neither set every run is kept. A job's table replaces
// the server's key by key (docs/retention.md).
type Retention struct {
	// KeepLast keeps the last N finished runs of each job; 0: no such
	// rule.
	KeepLast int `toml:"keep_last,omitempty" json:"keep_last,omitempty"`
	// KeepFor keeps runs that finished within this age ("30d", "12h");
	// 0: no such rule.
	KeepFor Age `toml:"keep_for,omitzero" json:"keep_for,omitempty"`
}

// Validate refuses negative rules.
func (r *Retention) Validate() error {
	if r.KeepLast < 0 {
		return fmt.Errorf("retention keep_last %d: must not be negative", r.KeepLast)
	}
	if r.KeepFor < 0 {
		return fmt.Errorf("retention keep_for: must not be negative")
	}
	return nil
}

// Over returns r with each rule that over sets (non-zero) replacing r's.
func (r Retention) Over(over *Retention) Retention {
	if over == nil {
		return r
	}
	if over.KeepLast != 0 {
		r.KeepLast = over.KeepLast
	}
	if over.KeepFor != 0 {
		r.KeepFor = over.KeepFor
	}
	return r
}

// KeepsAll reports whether r has no rule: then nothing is removed.
func (r Retention) KeepsAll() bool { return r.KeepLast == 0 && r.KeepFor == 0 }

// Age is a duration written with days too: "30d", "36h", "90m", "1d12h".
type Age time.Duration

// ParseAge parses an Age: Go durations ("36h", "90m") and a leading
// number of days ("30d", "1d12h").
func ParseAge(s string) (Age, error) {
	days := int64(0)
	rest := s
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 32)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad age %q (want e.g. 30d, 36h, 1d12h)", s)
		}
		days, rest = n, s[i+1:]
	}
	var d time.Duration
	if rest != "" {
		v, err := time.ParseDuration(rest)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("bad age %q (want e.g. 30d, 36h, 1d12h)", s)
		}
		d = v
	}
	if s == "" {
		return 0, fmt.Errorf("empty age (want e.g. 30d, 36h)")
	}
	return Age(time.Duration(days)*24*time.Hour + d), nil
}

// UnmarshalText implements encoding.TextUnmarshaler (TOML and JSON).
func (a *Age) UnmarshalText(b []byte) error {
	v, err := ParseAge(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// MarshalText writes whole days as "30d", other ages as a Go duration.
func (a Age) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

func (a Age) String() string {
	d := time.Duration(a)
	if d != 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// Std returns a as a time.Duration.
func (a Age) Std() time.Duration { return time.Duration(a) }

// CodeQuota (429, no Retry-After; 413 for an upload): the owner stores
// more than its storage_quota; the message names the limit.
const CodeQuota = "storage_quota"

// GCReport is what a collection removed (or, dry, would remove): POST
// /v1/gc.
type GCReport struct {
	DryRun bool `json:"dry_run"`
	// Busy: another sweep (another replica's, or the schedule's) was
	// running; nothing was done.
	Busy bool `json:"busy,omitempty"`
	// Runs and Consoles are the finished runs removed and the consoles
	// that went with them (ConsoleBytes their stored bytes).
	Runs         int   `json:"runs"`
	Consoles     int   `json:"consoles"`
	ConsoleBytes int64 `json:"console_bytes"`
	// Blobs are the blob files removed, BlobBytes their size.
	Blobs     int   `json:"blobs"`
	BlobBytes int64 `json:"blob_bytes"`
	// Bytes is ConsoleBytes + BlobBytes.
	Bytes int64 `json:"bytes"`
	// Kept is how many finished runs remain; BlobsKept and BlobBytesKept
	// the blob files that remain.
	Kept          int   `json:"kept"`
	BlobsKept     int   `json:"blobs_kept"`
	BlobBytesKept int64 `json:"blob_bytes_kept"`
	// Took is how long the sweep took.
	Took Duration `json:"took"`
}

// GC asks the server to collect now (an admin call): runs the retention
// rules no longer keep, their consoles and every blob nothing references.
// dryRun only reports what would go.
func (c *Client) GC(ctx context.Context, dryRun bool) (*GCReport, error) {
	q := url.Values{}
	if dryRun {
		q.Set("dry_run", "1")
	}
	var out GCReport
	_, err := c.do(ctx, http.MethodPost, "/v1/gc", q, nil, &out)
	return &out, err
}

// KeepRun keeps run id forever (keep true) or hands it back to the
// retention rules (keep false).
func (c *Client) KeepRun(ctx context.Context, id string, keep bool) (*Run, error) {
	method := http.MethodPost
	if !keep {
		method = http.MethodDelete
	}
	var out Run
	_, err := c.do(ctx, method, "/v1/runs/"+esc(id)+"/keep", nil, nil, &out)
	return &out, err
}

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/kiln-build/kiln/api"
)

// DefaultServerConfigPath is where `kiln server` looks without --config.
const DefaultServerConfigPath = "/etc/kiln/server.toml"

// Server is the configuration of `kiln server`. contrib/server.toml lists
// every key with its default.
type Server struct {
	Listen  string `toml:"listen"`
	DataDir string `toml:"data_dir"`
	// TLSCert and TLSKey (PEM files) switch the listener to HTTPS when both
	// are set.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// LeaseDuration is how long a lease lives without a heartbeat.
	LeaseDuration api.Duration `toml:"lease_duration"`
	// LeaseCheck is how often expired leases are looked for.
	LeaseCheck api.Duration `toml:"lease_check"`
	// MaxAttempts bounds how often a run whose lease was lost is retried;
	// after the last one it ends as "lost".
	MaxAttempts int `toml:"max_attempts"`
	// ConsoleCap is the console bytes stored per attempt; more is counted
	// but dropped.
	ConsoleCap api.Size `toml:"console_cap"`
	// MaxBody bounds JSON request bodies.
	MaxBody api.Size `toml:"max_body"`
	// MaxLogAppend bounds one console append.
	MaxLogAppend api.Size `toml:"max_log_append"`
	// MaxBlob bounds one input or artifact.
	MaxBlob api.Size `toml:"max_blob"`
	// CronTick is how often schedules are checked.
	CronTick api.Duration `toml:"cron_tick"`
	// MaxLeaseWait caps a worker's lease long-poll.
	MaxLeaseWait api.Duration `toml:"max_lease_wait"`
	// EnrollmentTTL is the default lifetime of an enrollment token.
	EnrollmentTTL api.Duration `toml:"enrollment_ttl"`
	// Synchronous is SQLite's synchronous pragma: "full" survives power
	// loss, "normal" (WAL) survives a crashed process only.
	Synchronous string `toml:"synchronous"`
	// ReproduceWait is how long a member of a reproduce group waits for a
	// host that holds no other member; after that it may share a host
	// (and the group's verdict says "same host").
	ReproduceWait api.Duration `toml:"reproduce_wait"`
	// RateLimit is the requests per second each client token may make on
	// average (the admin token is not limited), RateBurst how many it may make at once; more
	// are answered 429 with Retry-After. Every token has a bucket of its
	// own, so one client's burst never slows another token. 0: no limit.
	RateLimit float64 `toml:"rate_limit"`
	RateBurst int     `toml:"rate_burst"`
	// WorkerRateLimit and WorkerRateBurst are the same for each worker
	// token, apart from the clients' buckets.
	WorkerRateLimit float64 `toml:"worker_rate_limit"`
	WorkerRateBurst int     `toml:"worker_rate_burst"`
	// PartialTTL is how long a partial blob upload is kept without a new
	// chunk; older ones are removed (checked every PartialTTL/24).
	PartialTTL api.Duration `toml:"partial_ttl"`
	// PriorityCeiling is the highest priority a client token may give a
	// job or an execute; above it only an admin may.
	PriorityCeiling int `toml:"priority_ceiling"`
	// Owners are the dispatch rules per owner: the key is a group's name
	// (for the tokens in it), or a client token's name (for a token in no
	// group), or "admin". An owner not listed has share 1 and no limits.
	Owners map[string]Owner `toml:"owners"`
	// Store chooses the database.
	Store StoreConfig `toml:"store"`
	// Retention says which finished runs the server keeps, and when it
	// collects (docs/retention.md).
	Retention Retention `toml:"retention"`
	// UI configures the web view served at /.
	UI UI `toml:"ui"`
}

// UI configures the web view.
type UI struct {
	// Public serves the read-only pages without a token, like a public
	// build log; writes (cancel, execute, drain) still need a login.
	Public bool `toml:"public"`
}

// Owner is an [owners.NAME] table: how one owner's runs are dispatched.
type Owner struct {
	// Share weighs the owner's running work against the other owners':
	// a host's free slot goes to the owner with the least running runs
	// per share. Default 1.
	Share int `toml:"share"`
	// MaxRunning bounds the owner's leased and running runs; 0: none.
	MaxRunning int `toml:"max_running"`
	// MaxQueued bounds the owner's queued runs: an execute (or a
	// schedule's fire) that would queue more is refused; 0: none.
	MaxQueued int `toml:"max_queued"`
	// StorageQuota bounds the bytes of the owner's artifacts and
	// consoles: past it, an execute is refused (429) and so is a client
	// upload (413); 0: none.
	StorageQuota api.Size `toml:"storage_quota"`
}

// Retention is server.toml's [retention] table: the rules (keep_last,
// keep_for, which a job's own [retention] overrides key by key) and the
// collection's schedule.
type Retention struct {
	api.Retention
	// Interval is how often the server collects (0: only on `kiln server
	// gc`).
	Interval api.Duration `toml:"interval"`
	// Grace is how long a blob file nothing references is left alone
	// (an upload whose run has not reported yet, an input whose job is
	// not added yet).
	Grace api.Duration `toml:"grace"`
}

// StoreConfig is the [store] table of server.toml.
type StoreConfig struct {
	// URL is a PostgreSQL connection URL (postgres://user@host/db?...);
	// several servers given the same URL and one shared data_dir serve one
	// queue. Empty: SQLite in data_dir, for one server.
	URL string `toml:"url"`
}

// Postgres reports whether the store is PostgreSQL.
func (s *Server) Postgres() bool { return s.Store.URL != "" }

// DefaultServer returns the built-in server defaults.
func DefaultServer() *Server {
	return &Server{
		Listen:        "127.0.0.1:8420",
		DataDir:       "/var/lib/kiln/server",
		LeaseDuration: api.Duration(60 * time.Second),
		LeaseCheck:    api.Duration(5 * time.Second),
		MaxAttempts:   3,
		ConsoleCap:    64 << 20,
		MaxBody:       4 << 20,
		MaxLogAppend:  1 << 20,
		MaxBlob:       8 << 30,
		CronTick:      api.Duration(time.Second),
		MaxLeaseWait:  api.Duration(60 * time.Second),
		EnrollmentTTL: api.Duration(24 * time.Hour),
		Synchronous:   "full",
		ReproduceWait: api.Duration(30 * time.Second),

		RateLimit:       20,
		RateBurst:       100,
		WorkerRateLimit: 200,
		WorkerRateBurst: 1000,
		PartialTTL:      api.Duration(24 * time.Hour),
		PriorityCeiling: 100,

		Retention: Retention{Interval: api.Duration(time.Hour), Grace: api.Duration(24 * time.Hour)},
	}
}

// LoadServer reads path over the defaults. A missing file is not an error
// unless it was named explicitly.
func LoadServer(path string, explicit bool) (*Server, error) {
	s := DefaultServer()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return s, s.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("read server config: %w", err)
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(s)
	if err != nil {
		return nil, fmt.Errorf("server config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("server config %s: unknown key %q", path, und[0].String())
	}
	return s, s.Validate()
}

// Validate checks the values.
func (s *Server) Validate() error {
	switch {
	case (s.TLSCert == "") != (s.TLSKey == ""):
		return errors.New("server config: set both tls_cert and tls_key, or neither")
	case s.MaxAttempts < 1:
		return errors.New("server config: max_attempts must be at least 1")
	case s.LeaseDuration <= 0 || s.LeaseCheck <= 0 || s.CronTick <= 0 || s.MaxLeaseWait <= 0 || s.ReproduceWait <= 0:
		return errors.New("server config: durations must be positive")
	case s.ConsoleCap <= 0 || s.MaxBody <= 0 || s.MaxLogAppend <= 0 || s.MaxBlob <= 0:
		return errors.New("server config: sizes must be positive")
	case s.RateLimit < 0 || s.RateBurst < 0 || s.WorkerRateLimit < 0 || s.WorkerRateBurst < 0:
		return errors.New("server config: rate limits must not be negative")
	case (s.RateLimit > 0 && s.RateBurst < 1) || (s.WorkerRateLimit > 0 && s.WorkerRateBurst < 1):
		return errors.New("server config: a rate limit needs a burst of at least 1")
	case s.PartialTTL <= 0:
		return errors.New("server config: partial_ttl must be positive")
	case s.Store.URL != "" && !strings.HasPrefix(s.Store.URL, "postgres://") && !strings.HasPrefix(s.Store.URL, "postgresql://"):
		return fmt.Errorf("server config: store url %q: want postgres://... (or no url for SQLite)", redactURL(s.Store.URL))
	case s.Synchronous != "full" && s.Synchronous != "normal":
		return fmt.Errorf("server config: synchronous %q: want full or normal", s.Synchronous)
	}
	for name, o := range s.Owners {
		if o.Share < 0 || o.MaxRunning < 0 || o.MaxQueued < 0 || o.StorageQuota < 0 {
			return fmt.Errorf("server config: owners.%s: share, max_running, max_queued and storage_quota must not be negative", name)
		}
	}
	if err := s.Retention.Validate(); err != nil {
		return fmt.Errorf("server config: %w", err)
	}
	if s.Retention.Interval < 0 || s.Retention.Grace < 0 {
		return errors.New("server config: retention interval and grace must not be negative")
	}
	return nil
}

// redactURL hides a password in a connection URL shown in an error.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

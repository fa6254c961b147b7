package testsupport

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver of DB
	_ "modernc.org/sqlite"             // the "sqlite" driver of DB

	"github.com/kiln-build/kiln/api"
)

// kilnBuild caches one build of the kiln binaries per test binary.
var kilnBuild struct {
	once sync.Once
	dir  string
	err  error
}

// BuildKiln returns the path of a kiln binary built from this tree, built
// once per test binary, with kiln-sandbox-init beside it (where a worker
// looks for it). KILN_BINARY names a pre-built one instead (e.g. one
// built with -race). The binaries live in the user's cache directory, one
// pair per source tree, and are replaced by rename, so test binaries
// running at the same time never see a half-written file and nothing
// piles up in /tmp.
func BuildKiln(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KILN_BINARY"); p != "" {
		return p
	}
	return filepath.Join(kilnBinaries(t), "kiln")
}

// SandboxInit returns the path of a kiln-sandbox-init built from this
// tree (once per test binary).
func SandboxInit(t testing.TB) string {
	t.Helper()
	return filepath.Join(kilnBinaries(t), "kiln-sandbox-init")
}

func kilnBinaries(t testing.TB) string {
	t.Helper()
	kilnBuild.once.Do(func() { kilnBuild.dir, kilnBuild.err = buildKiln() })
	if kilnBuild.err != nil {
		t.Fatal(kilnBuild.err)
	}
	return kilnBuild.dir
}

func buildKiln() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	tree := sha256.Sum256(bytes.TrimSpace(gomod))
	dir := filepath.Join(cache, "kiln-test", hex.EncodeToString(tree[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"kiln", "kiln-sandbox-init"} {
		tmp, err := os.CreateTemp(dir, name+"-*.tmp")
		if err != nil {
			return "", err
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		cmd := exec.Command("go", "build", "-o", tmp.Name(), "github.com/kiln-build/kiln/cmd/"+name)
		if name == "kiln-sandbox-init" {
			// It runs inside images with libraries of their own.
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", name, err, b)
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// TestServer is a real `kiln server` child process on 127.0.0.1 with its
// own data directory.
type TestServer struct {
	t       testing.TB
	Bin     string
	DataDir string
	Config  string // path of the server.toml it runs with
	Addr    string // host:port
	URL     string // http://host:port, https:// for StartTLSServer
	LogPath string // its stderr
	// CAFile is the PEM certificate a client of a StartTLSServer trusts.
	CAFile string
	// StoreURL is the PostgreSQL database it runs on ("" for SQLite in
	// DataDir), and Postgres the cluster holding it.
	StoreURL string
	Postgres *Postgres

	proc *Process
}

// StartServer builds kiln (once) and starts `kiln server` on a free port
// with a temp data dir. extraConfig lines are added to its server.toml
// (e.g. `lease_duration = "2s"`). The process is killed at cleanup.
// With KILN_TEST_STORE=postgres it runs on a database of a PostgreSQL
// cluster of its own (see TestStore).
func StartServer(t testing.TB, extraConfig ...string) *TestServer {
	t.Helper()
	return startServer(t, t.TempDir(), "http", testDatabase(t), "", extraConfig)
}

// StartTLSServer is StartServer speaking HTTPS with a self-signed
// certificate for 127.0.0.1 (see SelfSignedCert), which CAFile holds.
func StartTLSServer(t testing.TB, extraConfig ...string) *TestServer {
	t.Helper()
	dir := t.TempDir()
	cert, key := SelfSignedCert(t, dir)
	extra := append([]string{fmt.Sprintf("tls_cert = %q\ntls_key = %q", cert, key)}, extraConfig...)
	return startServer(t, dir, "https", testDatabase(t), "", extra)
}

// StartServerOn starts `kiln server` like StartServer, on the PostgreSQL
// database storeURL ("" for SQLite) and with dataDir as its data dir (""
// for a new one). Replicas are servers started with the same storeURL
// and dataDir.
func StartServerOn(t testing.TB, storeURL, dataDir string, extraConfig ...string) *TestServer {
	t.Helper()
	return startServer(t, t.TempDir(), "http", pgDatabase{url: storeURL}, dataDir, extraConfig)
}

// pgDatabase is a test server's PostgreSQL database (url "" for SQLite).
type pgDatabase struct {
	url string
	pg  *Postgres
}

// testDatabase is the database of KILN_TEST_STORE: a new cluster's for
// postgres.
func testDatabase(t testing.TB) pgDatabase {
	t.Helper()
	if TestStore(t) != "postgres" {
		return pgDatabase{}
	}
	pg := StartPostgres(t)
	return pgDatabase{url: pg.NewDatabase(), pg: pg}
}

func startServer(t testing.TB, dir, scheme string, db pgDatabase, dataDir string, extraConfig []string) *TestServer {
	t.Helper()
	if dataDir == "" {
		dataDir = filepath.Join(dir, "data")
	}
	s := &TestServer{
		t:        t,
		Bin:      BuildKiln(t),
		DataDir:  dataDir,
		Config:   filepath.Join(dir, "server.toml"),
		LogPath:  filepath.Join(dir, "server.log"),
		StoreURL: db.url,
		Postgres: db.pg,
	}
	conf := strings.Join(extraConfig, "\n") + "\n"
	if db.url != "" {
		// Last: the lines before are top-level keys.
		conf += fmt.Sprintf("[store]\nurl = %q\n", db.url)
	}
	if err := os.WriteFile(s.Config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if scheme == "https" {
		s.CAFile = filepath.Join(dir, "cert.pem")
	}
	// A free port is found by listening on port 0 and closing it; another
	// test's process may take it before the server binds it (under the
	// whole suite's load it happened), so the first start picks another.
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Addr = ln.Addr().String()
		ln.Close()
		s.URL = scheme + "://" + s.Addr
		s.proc = nil
		if s.launch(attempt < 5) {
			break
		}
	}
	t.Cleanup(func() {
		s.Kill()
		// A binary built with -race (KILN_BINARY) reports into the log.
		if strings.Contains(s.Log(), "WARNING: DATA RACE") {
			t.Errorf("kiln server reported a data race:\n%s", s.Log())
		}
	})
	return s
}

func (s *TestServer) start() {
	s.t.Helper()
	s.launch(false)
}

// launch starts the server and waits until it is healthy. With
// portTaken true, a server that exits because its address is in use is
// no failure: launch returns false and the caller picks another port.
func (s *TestServer) launch(portTaken bool) bool {
	s.t.Helper()
	if s.proc == nil {
		s.proc = &Process{t: s.t, bin: s.Bin, LogPath: s.LogPath,
			args: []string{"server", "--config", s.Config, "--listen", s.Addr, "--data-dir", s.DataDir}}
	}
	s.proc.Start()
	hc := s.Client().HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := hc.Get(s.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		if s.proc.Exited() {
			if portTaken && strings.Contains(s.Log(), "address already in use") {
				return false
			}
			s.t.Fatalf("kiln server exited at start:\n%s", s.Log())
		}
		if time.Now().After(deadline) {
			s.Kill()
			s.t.Fatalf("kiln server not healthy after 30s:\n%s", s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns what the server wrote to stderr so far.
func (s *TestServer) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// AdminToken reads <data-dir>/admin.token.
func (s *TestServer) AdminToken() string {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		s.t.Fatalf("admin token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// Client is an API client with the admin token (before the server wrote
// it, with none).
func (s *TestServer) Client() *api.Client {
	b, _ := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	return s.ClientWith(strings.TrimSpace(string(b)))
}

// ClientWith is an API client with another token; it trusts CAFile.
func (s *TestServer) ClientWith(token string) *api.Client {
	c := api.NewClient(s.URL, token)
	if s.CAFile != "" {
		if err := c.TrustCA(s.CAFile); err != nil {
			s.t.Fatal(err)
		}
	}
	return c
}

// Pid is the running server process's pid.
func (s *TestServer) Pid() int { return s.proc.Pid() }

// Kill sends SIGKILL and waits for the process to be gone. Idempotent.
func (s *TestServer) Kill() {
	if s.proc != nil {
		s.proc.Kill()
	}
}

// Stop sends SIGTERM and waits for a graceful exit.
func (s *TestServer) Stop() {
	if s.proc != nil {
		s.proc.Term()
	}
}

// Restart kills the server (if running) and starts it again on the same
// port and data dir.
func (s *TestServer) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Run runs the kiln CLI against this server with the admin token and
// returns stdout, stderr and the exit code.
func (s *TestServer) Run(args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	var o, e strings.Builder
	cmd := exec.Command(s.Bin, args...)
	cmd.Env = append(os.Environ(), "KILN_SERVER="+s.URL, "KILN_TOKEN="+s.AdminToken())
	if s.CAFile != "" {
		cmd.Env = append(cmd.Env, "KILN_TLS_CA="+s.CAFile)
	}
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		s.t.Fatalf("kiln %v: %v", args, err)
	}
	return o.String(), e.String(), 0
}

// DB opens the server's database directly (tests that look at what is
// stored or change it behind the server's back). Queries use $1, $2, ...
// placeholders, which both SQLite and PostgreSQL understand.
func (s *TestServer) DB() *sql.DB {
	s.t.Helper()
	driver, dsn := "sqlite", "file:"+filepath.Join(s.DataDir, "kiln.db")
	if s.StoreURL != "" {
		driver, dsn = "pgx", s.StoreURL
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { db.Close() })
	return db
}

package testsupport

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// pgBinDir is where Debian's postgresql package puts initdb and pg_ctl.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// Postgres is a PostgreSQL cluster of its own (initdb in a temp dir, its
// own port and socket dir), run as the postgres user when the tests run
// as root (PostgreSQL refuses root).
type Postgres struct {
	t    testing.TB
	Dir  string // the cluster's data directory (also its socket dir)
	Port int
	user string // OS user running the cluster, "" for the current one
	dbs  int
}

// StartPostgres starts a new PostgreSQL cluster, stopped (immediately) at
// cleanup. Without Debian's postgresql package the test is skipped, or
// fails with CI=true. extraConf lines are added to its postgresql.conf
// after the tests' defaults (e.g. "fsync = on" for a benchmark).
func StartPostgres(t testing.TB, extraConf ...string) *Postgres {
	t.Helper()
	p := newPostgres(t, extraConf...)
	p.startOnFreePort(freePort)
	t.Cleanup(func() { p.ctl("stop", "-m", "immediate") })
	return p
}

// newPostgres makes a new cluster (initdb and postgresql.conf, but no
// port yet), not started.
func newPostgres(t testing.TB, extraConf ...string) *Postgres {
	t.Helper()
	Need(t, fileExists(filepath.Join(pgBinDir, "initdb")), "PostgreSQL 15 (Debian package postgresql)")
	p := &Postgres{t: t}
	if os.Geteuid() == 0 {
		_, err := user.Lookup("postgres")
		Need(t, err == nil, "the postgres user (Debian package postgresql)")
		p.user = "postgres"
	}
	// Not t.TempDir: its parents are private to root, and the cluster runs
	// as postgres.
	dir, err := os.MkdirTemp("", "kiln-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.Dir = filepath.Join(dir, "data")
	if p.user != "" {
		if out, err := exec.Command("chown", p.user, dir).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v\n%s", dir, err, out)
		}
	}
	p.pg("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D", p.Dir)
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n"+
		// Tests need no durability across power loss; fsync=off keeps the
		// machine's disk out of every commit.
		"fsync = off\nmax_connections = 200\nshared_buffers = 32MB\n", p.Dir) + strings.Join(extraConf, "\n") + "\n"
	appendConf(t, p.Dir, conf)
	return p
}

// pgPortAttempts bounds the ports a cluster tries before its start fails.
const pgPortAttempts = 5

// startOnFreePort starts the new cluster on a port that port picks. A
// free port is found by listening on port 0 and closing it: another
// test's process may bind it before the postmaster does (as with
// StartServer under the whole suite's load), and then the postmaster
// exits with "Address already in use"; the cluster is started again on
// another port, up to pgPortAttempts ports.
func (p *Postgres) startOnFreePort(port func(testing.TB) int) {
	p.t.Helper()
	logPath := filepath.Join(filepath.Dir(p.Dir), "postgres.log")
	for attempt := 1; ; attempt++ {
		p.Port = port(p.t)
		// The last port line of postgresql.conf wins.
		appendConf(p.t, p.Dir, fmt.Sprintf("port = %d\n", p.Port))
		os.Remove(logPath) // the log says why this attempt failed, not an earlier one
		out, err := p.run("pg_ctl", "-D", p.Dir, "-w", "start", "-l", logPath)
		if err == nil {
			return
		}
		log, _ := os.ReadFile(logPath)
		if attempt < pgPortAttempts && portInUse(string(log)) {
			p.t.Logf("PostgreSQL: port %d was taken before the postmaster bound it; trying another", p.Port)
			continue
		}
		p.t.Fatalf("pg_ctl start on port %d: %v\n%s\n%s", p.Port, err, out, log)
	}
}

// portInUse reports whether a postmaster's log says its TCP port was
// taken.
func portInUse(log string) bool {
	return strings.Contains(log, "Address already in use") && strings.Contains(log, "could not create any TCP/IP sockets")
}

// freePort is a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// appendConf appends lines to the cluster's postgresql.conf.
func appendConf(t testing.TB, dataDir, lines string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(lines)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// pg runs a PostgreSQL program from pgBinDir as the cluster's user.
func (p *Postgres) pg(prog string, args ...string) string {
	p.t.Helper()
	out, err := p.run(prog, args...)
	if err != nil {
		p.t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return out
}

// run runs a PostgreSQL program from pgBinDir as the cluster's user and
// returns its output.
func (p *Postgres) run(prog string, args ...string) (string, error) {
	bin := filepath.Join(pgBinDir, prog)
	var cmd *exec.Cmd
	if p.user != "" {
		cmd = exec.Command("runuser", append([]string{"-u", p.user, "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *Postgres) ctl(args ...string) {
	p.t.Helper()
	p.pg("pg_ctl", append([]string{"-D", p.Dir, "-w"}, args...)...)
}

// Start starts the cluster (again) and waits until it accepts connections.
func (p *Postgres) Start() {
	p.t.Helper()
	p.ctl("start", "-l", filepath.Join(filepath.Dir(p.Dir), "postgres.log"))
}

// StopImmediate stops the cluster the hard way (pg_ctl -m immediate): no
// clean shutdown, recovery at the next start.
func (p *Postgres) StopImmediate() {
	p.t.Helper()
	p.ctl("stop", "-m", "immediate")
}

// NewDatabase creates an empty database and returns its URL.
func (p *Postgres) NewDatabase() string {
	p.t.Helper()
	p.dbs++
	name := "kiln" + strconv.Itoa(p.dbs)
	p.pg("psql", "-h", p.Dir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", "postgres", "-q", "-c", "CREATE DATABASE "+name)
	return p.URL(name)
}

// URL is the connection URL of database name.
func (p *Postgres) URL(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, name)
}

// TestStore is the store the scheduler's tests run their servers with:
// KILN_TEST_STORE=postgres for PostgreSQL, empty or "sqlite" for SQLite.
func TestStore(t testing.TB) string {
	t.Helper()
	switch v := os.Getenv("KILN_TEST_STORE"); v {
	case "", "sqlite":
		return "sqlite"
	case "postgres":
		return v
	default:
		t.Fatalf("KILN_TEST_STORE=%q: want sqlite or postgres", v)
		return ""
	}
}

// Pid is the pid of the cluster's postmaster (its backends are its
// children).
func (p *Postgres) Pid() int {
	b, err := os.ReadFile(filepath.Join(p.Dir, "postmaster.pid"))
	if err != nil {
		p.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		p.t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

package testsupport

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPostgresPortTaken: a port taken between the pick and the
// postmaster's bind (here: held on purpose) costs the cluster another
// port, not the test. The cluster ends up on a port of its own and
// answers queries there.
func TestPostgresPortTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	picks := 0
	port := func(t testing.TB) int {
		picks++
		if picks == 1 {
			return taken
		}
		return freePort(t)
	}
	p := newPostgres(t)
	p.startOnFreePort(port)
	t.Cleanup(func() { p.ctl("stop", "-m", "immediate") })
	if picks != 2 || p.Port == taken {
		t.Fatalf("cluster on port %d after %d picks; want a second pick, not the taken port %d", p.Port, picks, taken)
	}
	out, err := exec.Command(filepath.Join(pgBinDir, "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-d", "postgres", "-tAc", "SELECT 40 + 2").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql on port %d: %v %q", p.Port, err, out)
	}
}

// TestPostgresPortInUseLog: only a postmaster that could not bind its
// port is started again elsewhere; a start that failed for another
// reason fails with the postmaster's log.
func TestPostgresPortInUseLog(t *testing.T) {
	tests := []struct {
		log  string
		want bool
	}{
		{"LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\nWARNING:  could not create listen socket for \"127.0.0.1\"\nFATAL:  could not create any TCP/IP sockets\n", true},
		{"FATAL:  data directory \"/x\" has invalid permissions\n", false},
		{"FATAL:  could not create any TCP/IP sockets\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := portInUse(tt.log); got != tt.want {
			t.Errorf("portInUse(%q) = %v, want %v", tt.log, got, tt.want)
		}
	}
}

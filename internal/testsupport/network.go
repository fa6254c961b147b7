package testsupport

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// slot reserves, for the test's life, a number in [0, 256) that no other
// test process holds under kind: a lock file per number, flock'd. Test
// packages run in parallel and must not hand out one address twice.
func slot(t testing.TB, kind string) int {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "kiln-test-"+kind)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 256 {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(i)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() })
		return i
	}
	t.Fatalf("all 256 %s slots are taken", kind)
	return 0
}

// Subnet reserves an IPv4 /24 for one test host's bridge sandboxes, in
// 10.122.0.0/16 (apart from kiln's default 10.121.0.0/16, so that tests
// never collide with a real worker on the same machine).
func Subnet(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("10.122.%d.0/24", slot(t, "subnet"))
}

// HostGreeting is what a HostListener says to every client.
const HostGreeting = "hello-from-host"

// HostListener accepts on addr (e.g. "127.0.0.1:0", "0.0.0.0:0") on the
// host and greets every client with HostGreeting: the probe a sandbox
// must not reach. It returns the port; cleanup closes it.
func HostListener(t testing.TB, addr string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(conn, HostGreeting)
			conn.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// HostAddr is one of the host's own non-loopback IPv4 addresses outside
// the tests' sandbox subnets.
func HostAddr(t testing.TB) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !strings.HasPrefix(n.IP.String(), "10.122.") {
			return n.IP.String()
		}
	}
	Need(t, false, "a non-loopback IPv4 address on the host")
	return ""
}

// Field is the value of the console line "name: value" in out, "" when
// there is none.
func Field(out, name string) string {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `: (.*)$`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(m[1])
}

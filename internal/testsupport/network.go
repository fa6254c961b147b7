package testsupport

import (
	"fmt"
	"os"
	"path/filepath"
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

package testsupport

import (
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/images"
)

// BusyboxRootfs makes a host-arch busybox rootfs in a new temp dir and
// returns its path. Needs Debian's busybox-static (/bin/busybox).
func BusyboxRootfs(t testing.TB) string {
	t.Helper()
	bb := "/bin/busybox"
	Need(t, fileExists(bb), "/bin/busybox (apt-get install busybox-static)")
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := images.WriteBusyboxRootfs(dir, bb); err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	return dir
}

package testsupport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// OverlayOf mounts a writable overlay over lower and returns its merged
// dir, unmounted at cleanup: the rootfs a raw `ctr run --rootfs` baseline
// runs on in benchmarks.
func OverlayOf(t testing.TB, lower string) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(base, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, base, base)
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(merged, syscall.MNT_DETACH) })
	return merged
}

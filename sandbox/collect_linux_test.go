package sandbox

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// hugeSparseDir is a directory whose filesystem takes a 100T sparse file:
// the test's temp dir if it does, else a tmpfs (ext4 stops at 16T a file).
func hugeSparseDir(t *testing.T) string {
	dir := t.TempDir()
	probe := filepath.Join(dir, "probe")
	f, err := os.Create(probe)
	mustDo(t, err)
	err = f.Truncate(100 << 40)
	f.Close()
	os.Remove(probe)
	if err == nil {
		return dir
	}
	// (testsupport.NeedRoot cannot be imported here: import cycle.)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatalf("mount a tmpfs for a 100T sparse file (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

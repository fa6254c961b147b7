package testsupport

import (
	"os"
	"path/filepath"
	"testing"
)

// RescueRootfs makes a root filesystem for a jail in a new temp dir: the
// base system's static /rescue/rescue, under the names a shell job needs
// (it runs as the program its name says).
func RescueRootfs(t testing.TB) string {
	t.Helper()
	const rescue = "/rescue/rescue"
	Need(t, fileExists(rescue), rescue+" (FreeBSD base system)")
	root := filepath.Join(t.TempDir(), "rootfs")
	bin := filepath.Join(root, "bin")
	for _, d := range []string{bin, filepath.Join(root, "tmp"), filepath.Join(root, "dev")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(rescue)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "rescue"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sh", "sleep", "kill", "mkdir", "cat"} {
		if err := os.Link(filepath.Join(bin, "rescue"), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

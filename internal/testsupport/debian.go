package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// DebianTree returns a fresh minimal Debian tree (debootstrap
// --variant=minbase SUITE, the host's arch) in a temp dir of the test, to
// chroot into. The first call builds it from Debian's default mirror (a
// minute or two) and keeps it as a tarball in CacheDir; later calls only
// unpack that.
func DebianTree(t testing.TB, suite string) string {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "debootstrap")
	NeedCommand(t, "tar")
	tarball := filepath.Join(CacheDir(), "debootstrap-"+suite+"-minbase.tar")
	if _, err := os.Stat(tarball); err != nil {
		if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp, err := os.MkdirTemp(CacheDir(), "debootstrap-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		root := filepath.Join(tmp, "root")
		if out, err := exec.Command("debootstrap", "--variant=minbase", suite, root).CombinedOutput(); err != nil {
			t.Fatalf("debootstrap %s: %v\n%s", suite, err, Tail(string(out), 20))
		}
		// Written beside and renamed: a test killed meanwhile leaves no
		// half tarball for the next one.
		part := filepath.Join(tmp, "tree.tar")
		if out, err := exec.Command("tar", "-C", root, "--numeric-owner", "-cf", part, ".").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v\n%s", err, out)
		}
		if err := os.Rename(part, tarball); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", dst, "--numeric-owner", "-xpf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("untar %s: %v\n%s", tarball, err, out)
	}
	return dst
}

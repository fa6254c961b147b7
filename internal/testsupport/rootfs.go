package testsupport

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/sandbox"
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

// CommitImage commits a copy of tree (cp -a: ownership and modes kept) to
// st as the snapshot image@version.
func CommitImage(t testing.TB, st sandbox.ImageStore, image, version, tree string) {
	t.Helper()
	ctx := context.Background()
	build, err := st.Begin(ctx, image, "")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", tree+"/.", build.Root).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := st.Commit(ctx, build, version); err != nil {
		t.Fatal(err)
	}
}

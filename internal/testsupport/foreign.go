package testsupport

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/images"
)

// CacheDir is where tests keep downloads that are slow to repeat and never
// change within a Debian release (foreign busybox packages): $KILN_TEST_CACHE,
// or kiln-test-cache under the system temp dir.
func CacheDir() string {
	if d := os.Getenv("KILN_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "kiln-test-cache")
}

// ForeignBusybox returns a static busybox binary for arch (Debian name),
// downloaded once into CacheDir with apt-get and unpacked with dpkg -x.
func ForeignBusybox(t testing.TB, arch string) string {
	t.Helper()
	NeedCommand(t, "apt-get")
	NeedCommand(t, "dpkg")
	p, err := images.ForeignBusybox(context.Background(), arch, filepath.Join(CacheDir(), "busybox"))
	if err != nil {
		t.Fatalf("foreign busybox %s: %v", arch, err)
	}
	return p
}

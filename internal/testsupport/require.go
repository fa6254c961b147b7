// Package testsupport holds the helpers that kiln's tests share: starting a
// real containerd, making a busybox rootfs, loop-mounted btrfs, zfs-fuse,
// starting a server. Nothing here is used outside tests.
package testsupport

import (
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run under CI (CI=true), where a missing
// prerequisite is a failure, never a skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Need stops the test when ok is false: it fails under CI, and skips
// elsewhere so a developer laptop without, say, zfs-fuse can still run the rest.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if CI() {
		t.Fatalf("prerequisite missing: %s (CI=true: missing prerequisites fail)", what)
	}
	t.Skipf("prerequisite missing: %s", what)
}

// NeedRoot requires uid 0 (mounts, containers).
func NeedRoot(t testing.TB) {
	t.Helper()
	Need(t, os.Geteuid() == 0, "running as root")
}

// NeedCommand requires an executable on PATH and returns its path.
func NeedCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, "command "+name+" on PATH")
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// NeedChromium requires Debian's chromium (the browser tests drive it with
// chromedp) and returns its path.
func NeedChromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Need(t, false, "command chromium on PATH (apt-get install chromium)")
	return ""
}

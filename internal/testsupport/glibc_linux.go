package testsupport

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// hostGlibc are the host's files a dynamically linked coreutils binary
// and libfaketime need, by their Debian paths for the host's arch.
var hostGlibc = map[string][]string{
	"amd64": {"/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libm.so.6"},
	"arm64": {"/lib/ld-linux-aarch64.so.1", "/lib/aarch64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libm.so.6"},
}

// AddHostGlibc copies the host's glibc (dynamic linker, libc, libm) into
// the rootfs root, at the host's paths, and each of bins (host paths of
// dynamically linked programs) to root/usr/bin/<name>: a busybox rootfs
// has only static binaries, which an LD_PRELOAD never reaches.
func AddHostGlibc(t testing.TB, root string, bins map[string]string) {
	t.Helper()
	files, ok := hostGlibc[runtime.GOARCH]
	Need(t, ok, "a known glibc layout for "+runtime.GOARCH)
	copyTo := func(src, dst string) {
		b, err := os.ReadFile(src) // follows the host's links: the content
		Need(t, err == nil, src+" (the host's glibc)")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(dst) // a busybox applet link
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		copyTo(f, filepath.Join(root, f))
	}
	for name, src := range bins {
		copyTo(src, filepath.Join(root, "usr", "bin", name))
	}
}

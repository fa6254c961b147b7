package linux_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
	"golang.org/x/sys/unix"
)

// foreignTimeout is a safety net against a hung container; emulated
// busybox starts in well under a second here.
const foreignTimeout = 2 * time.Minute

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestForeignArchContainer runs a busybox rootfs of a foreign arch (one
// little-, one big-endian) in a containerd sandbox through qemu-user's
// binfmt_misc handler (F flag: nothing of qemu is inside the rootfs), with
// a host-arch tools dir mounted read-only at /host/xtools.
func TestForeignArchContainer(t *testing.T) {
	testsupport.NeedRoot(t)
	addr := testsupport.StartContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), foreignTimeout)
	defer cancel()
	// The host-arch init installs the filter, then execs the foreign job
	// through binfmt_misc.
	c, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, SandboxInit: testsupport.SandboxInit(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	caps, err := qemu.Detect(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Host-arch tools: the host's static busybox, which runs natively
	// inside the emulated sandbox (the poudriere /nxb-bin pattern).
	testsupport.Need(t, fileExists("/bin/busybox"), "/bin/busybox (apt-get install busybox-static)")
	xtools := filepath.Join(t.TempDir(), "xtools")
	if err := os.MkdirAll(filepath.Join(xtools, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyExecutable(t, "/bin/busybox", filepath.Join(xtools, "bin", "busybox"))

	script := `uname -m
/host/xtools/bin/busybox uname -m
if touch /host/xtools/written 2>/dev/null; then echo host-writable; else echo host-read-only; fi
echo ok > /work/proof && cat /work/proof
awk '/^Seccomp:/ {print "seccomp", $2}' /proc/self/status`

	var host unix.Utsname
	if err := unix.Uname(&host); err != nil {
		t.Fatal(err)
	}
	hostUname := unix.ByteSliceToString(host.Machine[:])
	for arch, uname := range map[string]string{"arm64": "aarch64", "s390x": "s390x"} {
		t.Run(arch, func(t *testing.T) {
			testsupport.Need(t, caps.Runnable(arch), "a binfmt_misc handler with the F flag for "+arch+" (apt-get install qemu-user-static)")
			root := filepath.Join(t.TempDir(), "rootfs")
			if err := images.WriteBusyboxRootfs(root, testsupport.ForeignBusybox(t, arch)); err != nil {
				t.Fatal(err)
			}
			console := &lockedBuffer{}
			spec := sandbox.Spec{
				RunID:   newRunID(t),
				Root:    root,
				Arch:    arch,
				Args:    []string{"/bin/sh", "-c", script},
				Env:     []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"},
				Cwd:     "/work",
				Mounts:  []sandbox.Mount{{Source: xtools, Target: "/host/xtools", ReadOnly: true}},
				Console: console,
			}
			sb, err := c.Start(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				dctx, cancel := context.WithTimeout(context.Background(), foreignTimeout)
				defer cancel()
				if err := sb.Delete(dctx); err != nil {
					t.Errorf("delete: %v", err)
				}
			})
			exit, err := sb.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSpace(console.String()), "\n")
			want := []string{uname, hostUname, "host-read-only", "ok", "seccomp 2"}
			if exit.Code != 0 || strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("exit %d, console %q; want exit 0 and %q", exit.Code, got, want)
			}
			if _, err := os.Stat(filepath.Join(xtools, "written")); err == nil {
				t.Fatal("a write to /host reached the host directory")
			}
		})
	}
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// newRunID is unique across test processes: runc's state and the cgroup
// paths are shared by every containerd on the host.
func newRunID(t *testing.T) string {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "q" + hex.EncodeToString(b)
}

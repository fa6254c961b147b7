package vm

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"golang.org/x/sys/unix"
)

// TestHostileGuest boots guests whose job, root in the guest, goes for the
// host through the channel its exit status comes back on: it plants a
// FIFO, a symlink to /dev/zero, a 1 TiB sparse file or one of the host's
// block devices where the init used to leave the status (the control
// share, reached through /proc/1/root/kiln) and reboots, or floods the
// exit port. Each run must end in bounded time and memory with an error
// that says what the guest did, plant nothing on the host and leave
// nothing. One boot per case, under TCG.
func TestHostileGuest(t *testing.T) {
	testsupport.NeedVM(t)
	major, minor := hostBlockDevice(t)
	data := t.TempDir()
	l, err := New(Options{Dir: filepath.Join(data, "vm"), Accel: "tcg", MemoryBytes: 128 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := testsupport.BusyboxRootfs(t)
	const k = "k=/proc/1/root/kiln; "
	for _, tc := range []struct {
		name, script string
		code         int    // wanted exit code when wantErr is ""
		wantErr      string // in Wait's error
	}{
		{"exit code", "exit 7", 7, ""},
		{"fifo", k + "rm -f $k/exit; mkfifo $k/exit; reboot -f", 0, "without an exit code"},
		{"symlink to /dev/zero", k + "ln -sf /dev/zero $k/exit; reboot -f", 0, "without an exit code"},
		{"1 TiB sparse file", k + "truncate -s 1099511627776 $k/exit; reboot -f", 0, "without an exit code"},
		{"host block device", k + "mknod $k/exit b " + major + " " + minor + "; reboot -f", 0, "without an exit code"},
		{"flooded exit port", "head -c 4000000 /dev/zero >$(ls /dev/vport*p1); reboot -f", 0, `bytes on the exit port (starting "\x00`},
		{"garbage on exit port", "exec 3<>$(ls /dev/vport*p1); printf 'x\\n' >&3; head -c 1 <&3; reboot -f", 0, `sent "x\n" on the exit port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			run := "hostile-" + strings.NewReplacer(" ", "-", "/", "-").Replace(tc.name)
			sb, err := l.Start(ctx, sandbox.Spec{
				RunID: run, Root: root, Hostname: "h", Cwd: "/",
				Args: []string{"/bin/sh", "-c", tc.script}, Env: []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Delete(context.WithoutCancel(ctx))
			exit, err := waitBounded(ctx, t, sb)
			switch {
			case tc.wantErr == "" && (err != nil || exit.Code != tc.code):
				t.Errorf("Wait = %+v, %v; want exit code %d", exit, err, tc.code)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Wait = %+v, %v; want an error with %q", exit, err, tc.wantErr)
			}
			if fi, err := os.Lstat(filepath.Join(data, "vm", run, "kiln", "exit")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the guest planted kiln/exit on the host: %v, %v", fi, err)
			}
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(data, "vm", run)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("guest directory left: %v", err)
			}
			if pids := testsupport.Guests(t, data); len(pids) > 0 {
				t.Errorf("qemu left running: %v", pids)
			}
		})
	}
}

// waitBounded is sb.Wait with the process's address space capped a little
// above what it uses (qemu, started already, keeps its own limit): a Wait
// that reads whatever the guest points it at dies of "out of memory"
// instead of taking the shared machine's memory, and one that blocks for
// good fails the test at ctx's deadline.
func waitBounded(ctx context.Context, t *testing.T, sb sandbox.Sandbox) (sandbox.Exit, error) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &old); err != nil {
		t.Fatal(err)
	}
	capped := old
	capped.Cur = uint64(vmSize(t)) + 512<<20
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &capped); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &old); err != nil {
			t.Fatal(err)
		}
	}()
	type result struct {
		exit sandbox.Exit
		err  error
	}
	done := make(chan result, 1)
	go func() {
		exit, err := sb.Wait(ctx)
		done <- result{exit, err}
	}()
	select {
	case r := <-done:
		return r.exit, r.err
	case <-time.After(6 * time.Minute): // Wait ignored ctx: it is stuck
		t.Fatal("Wait did not return")
		return sandbox.Exit{}, nil
	}
}

// vmSize is the test process's virtual size in bytes.
func vmSize(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmSize:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmSize in /proc/self/status")
	return 0
}

// hostBlockDevice is the major and minor of a whole disk of the host with
// data on it: what a guest would most like to read.
func hostBlockDevice(t *testing.T) (major, minor string) {
	devs, _ := filepath.Glob("/sys/class/block/*")
	for _, d := range devs {
		if _, err := os.Stat(filepath.Join(d, "partition")); err == nil {
			continue
		}
		size, _ := os.ReadFile(filepath.Join(d, "size"))
		dev, _ := os.ReadFile(filepath.Join(d, "dev"))
		if n, _ := strconv.Atoi(strings.TrimSpace(string(size))); n == 0 {
			continue
		}
		if major, minor, ok := strings.Cut(strings.TrimSpace(string(dev)), ":"); ok {
			return major, minor
		}
	}
	testsupport.Need(t, false, "a block device with data in /sys/class/block")
	return "", ""
}

// TestGuestUnprivileged boots one guest whose job, root in the guest,
// makes a setuid-root binary, character and block device nodes, and a
// file given to a host uid outside its range, in its root and in /out,
// then waits. While it waits: qemu is not root on the host (its uids and
// gids are in a range of its own, no supplementary group of kiln's, a user
// namespace of its own), every directory it holds open (its shares) is on
// a nosuid,nodev mount, the guest's directory is a nodev,nosuid tmpfs, and
// the reaper's finder sees the guest. Afterwards: no device node exists
// on the host and nothing the guest made belongs to a host id outside
// 0-65535, the ids its namespace maps.
func TestGuestUnprivileged(t *testing.T) {
	testsupport.NeedVM(t)
	major, minor := hostBlockDevice(t)
	data := t.TempDir()
	l, err := New(Options{Dir: filepath.Join(data, "vm"), Accel: "tcg", MemoryBytes: 128 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := testsupport.BusyboxRootfs(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	script := `for d in / /out; do
		cp /bin/busybox $d/suid && chown 0:0 $d/suid && chmod 4755 $d/suid
		mknod $d/chr c 1 3 || echo "mknod chr refused in $d"
		mknod $d/blk b ` + major + " " + minor + ` || echo "mknod blk refused in $d"
		touch $d/far; chown 100000:100000 $d/far || echo "chown refused in $d"
	done
	echo kiln-ready; sleep 600`
	console := newMarkerWriter("kiln-ready")
	sb, err := l.Start(ctx, sandbox.Spec{
		RunID: "unprivileged", Root: root, Hostname: "h", Cwd: "/", Console: console,
		Mounts: []sandbox.Mount{{Source: out, Target: "/out"}},
		Args:   []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.WithoutCancel(ctx))
	select {
	case <-console.seen:
	case <-ctx.Done():
		t.Fatalf("the job never got ready; console: %s", console.text())
	}
	pid := sb.(*guest).cmd.Process.Pid
	proc := "/proc/" + strconv.Itoa(pid)

	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Uid", "Gid":
			for _, f := range strings.Fields(v) {
				if id, _ := strconv.ParseUint(f, 10, 32); id < rangeBase {
					t.Errorf("qemu's %s line %q: an id outside the VM ranges", k, line)
					break
				}
			}
		case "Groups":
			if strings.TrimSpace(v) != "" {
				t.Errorf("qemu keeps supplementary groups: %q", line)
			}
		}
	}
	if own, _ := os.Readlink("/proc/self/ns/user"); own == "" || own == mustReadlink(t, proc+"/ns/user") {
		t.Errorf("qemu is in the host's user namespace (%s)", own)
	}
	fds, err := os.ReadDir(proc + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	dirs := 0
	for _, fd := range fds {
		p := proc + "/fd/" + fd.Name()
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			continue
		}
		dirs++
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
			t.Errorf("qemu holds directory %s (%s) on a mount without nosuid,nodev (flags %#x)", p, mustReadlink(t, p), st.Flags)
		}
	}
	if dirs < 3 { // the shares: kiln, root, /out
		t.Errorf("qemu holds %d directories, want its 3 shares at least", dirs)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(data, "vm", "unprivileged"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.TMPFS_MAGIC || st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Errorf("guest directory: file system %#x, flags %#x; want a nosuid,nodev tmpfs", st.Type, st.Flags)
	}
	if g := testsupport.Guests(t, data); !slices.Contains(g, pid) {
		t.Errorf("testsupport.Guests = %v, not qemu (%d)", g, pid)
	}
	if run := l.guests()[pid]; run != "unprivileged" {
		t.Errorf("the reaper finds qemu (%d) as run %q", pid, run)
	}

	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("console: %s", console.text())
	for _, dir := range []string{root, out} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice) != 0 {
				t.Errorf("device node %s (%v) on the host", p, fi.Mode())
			}
			if s := fi.Sys().(*syscall.Stat_t); s.Uid >= rangeSize || s.Gid >= rangeSize {
				t.Errorf("%s is owned by host ids %d:%d, outside the namespace's 0-65535", p, s.Uid, s.Gid)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func mustReadlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// markerWriter is a console that closes seen when marker has been written.
type markerWriter struct {
	marker string
	seen   chan struct{}
	mu     sync.Mutex
	buf    []byte
	closed bool
}

func newMarkerWriter(marker string) *markerWriter {
	return &markerWriter{marker: marker, seen: make(chan struct{})}
}

func (w *markerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) < 1<<20 {
		w.buf = append(w.buf, p...)
	}
	if !w.closed && strings.Contains(string(w.buf), w.marker) {
		w.closed = true
		close(w.seen)
	}
	return len(p), nil
}

func (w *markerWriter) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

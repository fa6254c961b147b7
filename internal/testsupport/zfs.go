//go:build linux

package testsupport

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Host-wide files that let concurrent test processes share one zfs-fuse
// daemon (it serves a single socket per host): every user holds a shared
// flock on zfsLockFile while it uses the daemon; whoever started the
// daemon records its pid, and the last user to leave stops it.
const (
	zfsLockFile = "/run/kiln-test-zfs-fuse.lock"
	zfsPidFile  = "/run/kiln-test-zfs-fuse.pid"
)

// ZFS gives the test a fresh zfs-fuse pool on a sparse file and returns a
// dataset in it ("<pool>/kiln") for a backend to use as its parent. It
// starts the zfs-fuse daemon if none is running; cleanup destroys the pool
// and stops the daemon if a test started it and no other test (in any
// process) still uses it. It builds the zfsadapter (see its doc: what it
// translates between go-zfs and zfs-fuse) and puts it first on PATH as
// "zfs" for the rest of the test. Needs root, /dev/fuse, zfs-fuse, go.
func ZFS(t *testing.T) (parent string) {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "zfs-fuse")
	realZFS := NeedCommand(t, "zfs")
	zpool := NeedCommand(t, "zpool")
	goTool := NeedCommand(t, "go")
	if !fileExists("/dev/fuse") {
		_ = exec.Command("modprobe", "fuse").Run()
	}
	Need(t, fileExists("/dev/fuse"), "/dev/fuse (modprobe fuse)")
	dir := t.TempDir()

	useZFSFuse(t, zpool)
	bin := filepath.Join(dir, "bin")
	if out, err := exec.Command(goTool, "build", "-o", filepath.Join(bin, "zfs"), "github.com/kiln-build/kiln/internal/testsupport/zfsadapter").CombinedOutput(); err != nil {
		t.Fatalf("build zfsadapter: %v: %s", err, out)
	}
	t.Setenv("KILN_ZFS_REAL", realZFS)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	var b [4]byte
	_, _ = rand.Read(b[:])
	pool := "kilntest" + hex.EncodeToString(b[:])
	vdev := filepath.Join(dir, "pool.img")
	f, err := os.Create(vdev)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(512 << 20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if out, err := exec.Command(zpool, "create", "-m", mnt, pool, vdev).CombinedOutput(); err != nil {
		t.Fatalf("zpool create: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// zfs-fuse answers "busy" for a moment after a dataset was used.
		var out []byte
		var err error
		for range 50 {
			if out, err = exec.Command(zpool, "destroy", "-f", pool).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("zpool destroy %s: %v: %s", pool, err, out)
	})
	parent = pool + "/kiln"
	if out, err := exec.Command(realZFS, "create", parent).CombinedOutput(); err != nil {
		t.Fatalf("zfs create %s: %v: %s", parent, err, out)
	}
	return parent
}

// useZFSFuse makes sure a zfs-fuse daemon runs for the rest of the test
// and registers the cleanup that stops it when the last user leaves.
func useZFSFuse(t *testing.T, zpool string) {
	t.Helper()
	lock, err := os.OpenFile(zfsLockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fd := int(lock.Fd())
	// Exclusive while checking and starting, so two processes never both
	// start one; then shared for as long as the test uses it.
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var done chan error
	if exec.Command(zpool, "list", "-H").Run() != nil {
		done = startZFSFuse(t, zpool)
	}
	if err := syscall.Flock(fd, syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	// Registered before the pool's cleanup, so it runs after it.
	t.Cleanup(func() {
		defer lock.Close()
		if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			return // another test still uses the daemon
		}
		stopZFSFuse(t, done)
	})
}

// startZFSFuse runs zfs-fuse in the foreground as our child, records its
// pid, and waits until it answers. The returned channel yields its exit.
func startZFSFuse(t *testing.T, zpool string) chan error {
	t.Helper()
	cmd := exec.Command("zfs-fuse", "--no-daemon", "--no-kstat-mount")
	// It chats on every mount; its log is shown only if the test fails.
	logPath := filepath.Join(t.TempDir(), "zfs-fuse.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout = logf
	cmd.Stderr = logf
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("zfs-fuse log:\n%s", b)
			}
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatalf("start zfs-fuse: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := os.WriteFile(zfsPidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	var last []byte
	for range 100 {
		out, err := exec.Command(zpool, "list", "-H").CombinedOutput()
		if err == nil {
			return done
		}
		last = out
		select {
		case err := <-done:
			t.Fatalf("zfs-fuse exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("zfs-fuse did not come up: %s", strings.TrimSpace(string(last)))
	return nil
}

// stopZFSFuse stops the daemon a test started (this one, whose exit comes
// on done, or an earlier test process, known by the pid file). A daemon
// started outside the tests has no pid file and is left alone.
func stopZFSFuse(t *testing.T, done chan error) {
	b, err := os.ReadFile(zfsPidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Errorf("bad %s: %q", zfsPidFile, b)
		return
	}
	defer os.Remove(zfsPidFile)
	if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err != nil || strings.TrimSpace(string(comm)) != "zfs-fuse" {
		return // gone already (its pid may be reused: never signal a stranger)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	gone := func() bool {
		if done != nil {
			select {
			case <-done: //nolint:errcheck // gone is all that matters
				return true
			default:
				return false
			}
		}
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ")
	}
	for range 300 {
		if gone() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("zfs-fuse (pid %d) did not stop on SIGTERM; killing it", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if done != nil {
		<-done //nolint:errcheck // killed: its status is known
	}
}

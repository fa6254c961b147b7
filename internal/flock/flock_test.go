package flock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The holder must be another process: flocks of one process's separate
// descriptors conflict too, but only another process proves the kernel
// drops the lock at its death.
func TestTryLockHeldByAnotherProcess(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	cmd := exec.Command("flock", "-x", "-o", p, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal("flock(1) (util-linux) could not start:", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for !Held(p) {
		if cmd.ProcessState != nil {
			t.Fatal("flock(1) exited")
		}
	}
	_, err := TryLock(p, 0o600)
	var he *HeldError
	if !errors.Is(err, ErrHeld) || !errors.As(err, &he) || he.Path != p {
		t.Fatalf("TryLock of a held lock: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	// flock(1)'s child may still hold the inherited descriptor for the
	// moment between its fork and closing it (-o): wait for the kernel to
	// drop the lock, which it must once no process holds it.
	for i := 0; Held(p); i++ {
		if i == 1000 {
			t.Fatal("lock still held 10s after its holder was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	l, err := TryLock(p, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if pid, _ := Holder(p); pid != os.Getpid() {
		t.Fatalf("Holder = %d, want %d", pid, os.Getpid())
	}
}

func TestRecordAndHolder(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	l, err := TryLock(p, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if !Held(p) {
		t.Fatal("not held while locked")
	}
	if err := l.Record("/build/root"); err != nil {
		t.Fatal(err)
	}
	pid, extra := Holder(p)
	if pid != os.Getpid() || len(extra) != 1 || extra[0] != "/build/root" {
		t.Fatalf("Holder = %d %q", pid, extra)
	}
	_, err = TryLock(p, 0o600)
	if want := "held by pid " + strconv.Itoa(os.Getpid()); err == nil || !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), want) {
		t.Fatalf("second TryLock: %v, want %q", err, want)
	}
	l.Close()
	l.Close()
	if Held(p) {
		t.Fatal("held after Close")
	}
}

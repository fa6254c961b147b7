package platform

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestIdentityMadeOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	id, err := Identity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ValidIdentity(id) {
		t.Fatalf("identity %q is not 16 hex digits", id)
	}
	again, err := Identity(dir)
	if err != nil || again != id {
		t.Fatalf("second Identity = %q, %v; want %q", again, err, id)
	}
	other, err := Identity(t.TempDir())
	if err != nil || other == id {
		t.Fatalf("another data dir's identity = %q, %v; want a different one", other, err)
	}
	if err := os.WriteFile(filepath.Join(dir, IdentityFile), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Identity(dir); err == nil {
		t.Fatal("a garbled identity file was accepted")
	}
}

func TestLockDataDir(t *testing.T) {
	tests := []struct {
		name          string
		first, second bool // exclusive?
		wantBusy      bool
	}{
		{"worker then worker", true, true, true},
		{"worker then exec", true, false, true},
		{"exec then worker", false, true, true},
		{"exec then exec", false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := LockDataDir(dir, tc.first, "first")
			if err != nil {
				t.Fatal(err)
			}
			l2, err := LockDataDir(dir, tc.second, "second")
			if got := errors.Is(err, ErrDataDirBusy); got != tc.wantBusy {
				t.Fatalf("second lock: %v; want busy %v", err, tc.wantBusy)
			}
			if tc.wantBusy && tc.first && !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
				t.Errorf("error %q does not name the worker's pid", err)
			}
			l2.Release()
			l.Release()
			// Released: a worker may take it now.
			l3, err := LockDataDir(dir, true, "third")
			if err != nil {
				t.Fatalf("after release: %v", err)
			}
			l3.Release()
		})
	}
}

func TestOrphaned(t *testing.T) {
	live := t.TempDir()
	id, err := Identity(live)
	if err != nil {
		t.Fatal(err)
	}
	remade := t.TempDir()
	if _, err := Identity(remade); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, owner, dir string
		want             bool
	}{
		{"live data dir", id, live, false},
		{"gone data dir", id, filepath.Join(live, "gone"), true},
		{"data dir made anew", id, remade, true},
		{"no owner recorded", "", live, true},
		{"no data dir recorded", id, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := orphaned(tc.owner, tc.dir); got != tc.want {
				t.Fatalf("orphaned = %v, want %v", got, tc.want)
			}
		})
	}
}

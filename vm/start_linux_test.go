package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// TestStartFailureLeavesNothing fails Start in its shares phase, after the
// guest's directory, the exit port, the id range and the QMP socket are
// made: the undo must take them back, and no file of Start's stays open
// (before Start was split into phases, its deferred files.close closed the
// empty slice it was deferred with: a failed Start kept the range's lock,
// the shares' mounts and the QMP socket open until the GC closed them).
// No guest boots.
func TestStartFailureLeavesNothing(t *testing.T) {
	testsupport.NeedVM(t)
	data := t.TempDir()
	l, err := New(Options{Dir: filepath.Join(data, "vm"), Accel: "tcg"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := sandbox.Spec{RunID: "fails", Root: "/no/such/root", Cwd: "/", Args: []string{"/bin/true"}}
	start := func() {
		t.Helper()
		sb, err := l.Start(ctx, spec)
		if err == nil {
			sb.Delete(ctx)
			t.Fatal("Start with a missing root succeeded")
		}
		if _, err := os.Lstat(filepath.Join(l.opts.Dir, spec.RunID)); !os.IsNotExist(err) {
			t.Errorf("guest directory after a failed Start: %v", err)
		}
	}
	// The first Start also makes what the launcher keeps: the initramfs
	// and the range's user namespace.
	start()
	before := openFiles(t)
	start()
	if after := openFiles(t); after != before {
		t.Errorf("open files: %d before a failed Start, %d after", before, after)
	}
}

func openFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// TestProbeLeavesNothing runs the KVM probe with its qemu refused to start
// (ctx ended): the files it opened for qemu (kernel, initramfs, the id
// range's lock) must be closed all the same. Without /dev/kvm the probe
// opens nothing and there is nothing to check.
func TestProbeLeavesNothing(t *testing.T) {
	testsupport.NeedVM(t)
	l, err := New(Options{Dir: filepath.Join(t.TempDir(), "vm"), Accel: "tcg"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// What the launcher keeps, made before counting.
	if _, err := l.ensureInitrd(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ensureKernel(t.Context()); err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	before := openFiles(t)
	if ok, _ := l.probeKVM(ended, "q35"); ok {
		t.Fatal("probe with an ended ctx said KVM works")
	}
	if after := openFiles(t); after != before {
		t.Errorf("open files: %d before the probe, %d after", before, after)
	}
}

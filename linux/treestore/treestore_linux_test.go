package treestore

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/sandbox"
)

// Environment of the child process that TestBuildCrashChild becomes.
const (
	crashKindEnv = "KILN_TEST_CRASH_KIND"
	crashRootEnv = "KILN_TEST_CRASH_ROOT"
)

func openTreeStore(kind, root string) (sandbox.Backend, error) {
	if kind == "btrfs" {
		return NewBtrfs(root)
	}
	return NewOverlay(root)
}

// TestBuildCrashChild is not a test of its own: testBuildCrash runs the
// test binary again as a child that begins a build and waits to be killed.
func TestBuildCrashChild(t *testing.T) {
	kind := os.Getenv(crashKindEnv)
	if kind == "" {
		return
	}
	b, err := openTreeStore(kind, os.Getenv(crashRootEnv))
	if err != nil {
		t.Fatal(err)
	}
	bd, err := b.Begin(t.Context(), "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bd.Root+"/f", []byte("child"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("ready " + bd.Root + "\n")
	time.Sleep(time.Hour) // until SIGKILL
}

// testBuildCrash checks Leftovers against a build of another process: kept
// while that process lives, removed once it is SIGKILLed.
func testBuildCrash(t *testing.T, kind, root string) {
	b, err := openTreeStore(kind, root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBuildCrashChild$")
	cmd.Env = append(os.Environ(), crashKindEnv+"="+kind, crashRootEnv+"="+root)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	childRoot, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		t.Fatalf("child said %q, %v", line, err)
	}

	if err := b.Leftovers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(childRoot + "/f"); err != nil {
		t.Fatalf("Leftovers removed the build of a live process: %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := b.Leftovers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(childRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("build of the killed process survived Leftovers: %v", err)
	}
	if imgs, err := b.Images(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("Images = %v, %v; want none", imgs, err)
	}
}

// benchCloneDestroy measures one run's storage overhead: Clone then Destroy
// of a committed busybox-sized image.
func benchCloneDestroy(b *testing.B, s sandbox.Backend) {
	ctx := b.Context()
	bd, err := s.Begin(ctx, "img", "")
	if err != nil {
		b.Fatal(err)
	}
	for i := range 200 {
		if err := os.WriteFile(fmt.Sprintf("%s/f%d", bd.Root, i), make([]byte, 4096), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.Commit(ctx, bd, "v1"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Clone(ctx, "img@v1", "run"); err != nil {
			b.Fatal(err)
		}
		if err := s.Destroy(ctx, "run"); err != nil {
			b.Fatal(err)
		}
	}
}

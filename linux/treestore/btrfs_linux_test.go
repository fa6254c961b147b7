package treestore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/storagetest"
)

func TestBtrfsContract(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) sandbox.Backend {
		b, err := NewBtrfs(filepath.Join(testsupport.Btrfs(t), "kiln"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestBtrfsLeftoversAfterKill(t *testing.T) {
	testBuildCrash(t, "btrfs", filepath.Join(testsupport.Btrfs(t), "kiln"))
}

func TestBtrfsRefusesOtherFilesystems(t *testing.T) {
	_, err := NewBtrfs(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not on a btrfs filesystem") {
		t.Errorf("NewBtrfs on a non-btrfs dir: %v, want a clear refusal", err)
	}
}

// A job may create subvolumes of its own inside its clone (nested, too);
// Destroy must still remove the clone entirely.
func TestBtrfsDestroyNestedSubvolumes(t *testing.T) {
	b, err := NewBtrfs(filepath.Join(testsupport.Btrfs(t), "kiln"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	bd, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx, bd, "v1"); err != nil {
		t.Fatal(err)
	}
	c, err := b.Clone(ctx, "img@v1", "run1")
	if err != nil {
		t.Fatal(err)
	}
	outer := filepath.Join(c.Root, "sub")
	if err := btrfsCmd(ctx, "subvolume", "create", outer); err != nil {
		t.Fatal(err)
	}
	if err := btrfsCmd(ctx, "subvolume", "create", filepath.Join(outer, "inner")); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, "run1"); err != nil {
		t.Fatalf("Destroy with nested subvolumes: %v", err)
	}
	if _, err := os.Stat(c.Root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("clone root survived Destroy: %v", err)
	}
}

// The scratch's name in a limited clone is kiln's: an image cannot hold
// it, a clone of an older image that does gets it empty, and after its
// bind mount is gone (a reboot) a re-Clone binds it again without
// following what a job may have left under the name.
func TestBtrfsScratchName(t *testing.T) {
	b, err := NewBtrfs(filepath.Join(testsupport.Btrfs(t), "kiln"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	bd, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(bd.Root, scratchName, "caches"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx, bd, "v1"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), scratchName) {
		t.Fatalf("Commit of a tree with /%s: %v, want ErrInvalid naming it", scratchName, err)
	}
	// An image made before the name was kept: its clones' scratch is
	// made empty all the same.
	if err := btrfsCmd(ctx, "subvolume", "snapshot", "-r", bd.Root, b.snapDir("img", "v1")); err != nil {
		t.Fatal(err)
	}
	if err := b.Abort(ctx, bd); err != nil {
		t.Fatal(err)
	}
	c, err := b.CloneLimited(ctx, "img@v1", "run1", 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	if c.ScratchInRoot != "/"+scratchName || c.Scratch != filepath.Join(b.cloneDir("run1"), "scratch") {
		t.Fatalf("clone %+v: want the scratch at <dir>/scratch, /%s in the root", c, scratchName)
	}
	if ents, err := os.ReadDir(c.Scratch); err != nil || len(ents) != 0 {
		t.Fatalf("scratch of a fresh clone holds %v (%v), want nothing", ents, err)
	}

	t.Run("rebind", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(c.Scratch, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := unix.Unmount(c.Scratch, 0); err != nil {
			t.Fatal(err)
		}
		again, err := b.Clone(ctx, "img@v1", "run1")
		if err != nil || again != c {
			t.Fatalf("Clone after the scratch's mount went = %+v, %v; want %+v", again, err, c)
		}
		wantFileContent(t, filepath.Join(c.Scratch, "f"), "x")
	})

	t.Run("symlink-not-followed", func(t *testing.T) {
		if err := unix.Unmount(c.Scratch, 0); err != nil {
			t.Fatal(err)
		}
		// What a job could have done in its clone while no mask covered
		// the name (the run ended, the host rebooted).
		in := filepath.Join(c.Root, scratchName)
		if err := os.Rename(in, filepath.Join(c.Root, "moved")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(t.TempDir(), in); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Clone(ctx, "img@v1", "run1"); err == nil {
			t.Fatal("Clone bound a scratch through a symlink the job left")
		}
		if ms, err := mounts.Below(c.Scratch); err != nil || len(ms) != 0 {
			t.Fatalf("mounts at the scratch: %v, %v; want none", ms, err)
		}
	})
	if err := b.Destroy(ctx, "run1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(b.cloneDir("run1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("clone dir survived Destroy: %v", err)
	}
}

func wantFileContent(t *testing.T, p, want string) {
	t.Helper()
	if got, err := os.ReadFile(p); err != nil || string(got) != want {
		t.Errorf("%s = %q, %v; want %q", p, got, err, want)
	}
}

func BenchmarkBtrfsCloneDestroy(b *testing.B) {
	s, err := NewBtrfs(filepath.Join(testsupport.Btrfs(b), "kiln"))
	if err != nil {
		b.Fatal(err)
	}
	benchCloneDestroy(b, s)
}

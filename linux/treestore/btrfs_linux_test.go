package treestore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

func BenchmarkBtrfsCloneDestroy(b *testing.B) {
	s, err := NewBtrfs(filepath.Join(testsupport.Btrfs(b), "kiln"))
	if err != nil {
		b.Fatal(err)
	}
	benchCloneDestroy(b, s)
}

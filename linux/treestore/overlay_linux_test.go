package treestore

import (
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/storagetest"
)

func TestOverlayContract(t *testing.T) {
	testsupport.NeedRoot(t)
	storagetest.Run(t, func(t *testing.T) sandbox.Backend {
		o, err := NewOverlay(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return o
	})
}

func TestOverlayLeftoversAfterKill(t *testing.T) {
	testsupport.NeedRoot(t)
	testBuildCrash(t, "overlay", t.TempDir())
}

func BenchmarkOverlayCloneDestroy(b *testing.B) {
	testsupport.NeedRoot(b)
	o, err := NewOverlay(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	benchCloneDestroy(b, o)
}

// Clones are mounted volatile, so unmounting one does not sync the whole
// filesystem beneath the clones.
func TestOverlayCloneIsVolatile(t *testing.T) {
	testsupport.NeedRoot(t)
	ctx := t.Context()
	o, err := NewOverlay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bd, err := o.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	si, err := o.Commit(ctx, bd, "20261122T000000Z")
	if err != nil {
		t.Fatal(err)
	}
	c, err := o.Clone(ctx, si.Image+"@"+si.Version, "volatile-test")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Destroy(ctx, "volatile-test")
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(c.Root))
	if err != nil || len(ms) != 1 {
		t.Fatalf("mount of %s: %v %v", c.Root, ms, err)
	}
	// Newer kernels spell it fsync=volatile.
	if opts := strings.Split(ms[0].VFSOptions, ","); !slices.Contains(opts, "volatile") && !slices.Contains(opts, "fsync=volatile") {
		t.Errorf("clone mounted with %q, want volatile", ms[0].VFSOptions)
	}
}

package linux

import (
	"testing"

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

package sandbox

import (
	"fmt"

	"github.com/kiln-build/kiln/errdefs"
)

func mountOverlay(lower, upper, work, merged string) error {
	return fmt.Errorf("caches are not supported on FreeBSD yet: %w", errdefs.ErrUnsupported)
}

// unmountCaches: nothing is ever mounted for caches on FreeBSD.
func unmountCaches(dir string) error { return nil }

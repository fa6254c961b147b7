package sandbox

import "fmt"

func mountOverlay(lower, upper, work, merged string) error {
	return fmt.Errorf("caches are not supported on FreeBSD yet: %w", ErrUnsupported)
}

// unmountCaches: nothing is ever mounted for caches on FreeBSD.
func unmountCaches(dir string) error { return nil }

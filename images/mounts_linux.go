package images

import "github.com/kiln-build/kiln/internal/mounts"

// unmountUnder detaches every mount at or below dir, deepest first. A
// killed debootstrap leaves /proc and /sys mounted in its target, and the
// storage backend could not remove the build area with them there.
func unmountUnder(dir string) error {
	if dir == "" {
		return nil
	}
	return mounts.UnmountBelow(dir)
}

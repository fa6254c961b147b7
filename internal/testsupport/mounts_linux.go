package testsupport

import "github.com/kiln-build/kiln/internal/mounts"

// unmountBelow detaches every mount at or below dir, so that removing a
// test's temp dir never leaves (or deletes through) a mount: a worker a
// test killed leaves its warm clone mounted.
func unmountBelow(dir string) { _ = mounts.UnmountBelow(dir) }

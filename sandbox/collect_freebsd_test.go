package sandbox

import "testing"

// hugeSparseDir is a directory whose filesystem takes a 100T sparse file
// (ZFS and UFS do).
func hugeSparseDir(t *testing.T) string { return t.TempDir() }

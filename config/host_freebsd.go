package config

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// hostMemory is the host's RAM in bytes (0 if unknown: no maximum).
func hostMemory() int64 {
	n, err := unix.SysctlUint64("hw.physmem")
	if err != nil {
		return 0
	}
	return int64(n)
}

// fsSize is the size of the filesystem holding dir (or its nearest
// existing parent: the storage root may not exist yet); 0 if unknown.
func fsSize(dir string) int64 {
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			return int64(st.Blocks) * int64(st.Bsize)
		} else if !os.IsNotExist(err) || dir == filepath.Dir(dir) {
			return 0
		}
		dir = filepath.Dir(dir)
	}
}

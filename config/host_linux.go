package config

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// hostMemory is the host's RAM in bytes (0 if unknown: no maximum).
func hostMemory() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

// fsSize is the size of the filesystem holding dir (or its nearest
// existing parent: the storage root may not exist yet); 0 if unknown.
func fsSize(dir string) int64 {
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			return int64(st.Blocks) * st.Bsize
		} else if !os.IsNotExist(err) || dir == filepath.Dir(dir) {
			return 0
		}
		dir = filepath.Dir(dir)
	}
}

package config

import (
	"math"
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
	return int64(min(uint64(si.Totalram)*uint64(si.Unit), math.MaxInt64))
}

// fsSize is the size of the filesystem holding dir (or its nearest
// existing parent: the storage root may not exist yet); 0 if unknown.
func fsSize(dir string) int64 {
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			return int64(min(st.Blocks*uint64(max(st.Bsize, 0)), math.MaxInt64))
		} else if !os.IsNotExist(err) || dir == filepath.Dir(dir) {
			return 0
		}
		dir = filepath.Dir(dir)
	}
}

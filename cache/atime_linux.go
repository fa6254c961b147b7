package cache

import (
	"io/fs"
	"syscall"
	"time"
)

// used is the later of a file's access and modification times: a hit
// (read through a run's layer) counts as a use where the filesystem keeps
// atimes (relatime: at most once a day, enough for LRU).
func used(info fs.FileInfo) time.Time {
	t := info.ModTime()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		if a := time.Unix(st.Atim.Unix()); a.After(t) {
			return a
		}
	}
	return t
}

package cache

import (
	"io/fs"
	"syscall"
	"time"
)

// used is the later of a file's access and modification times.
func used(info fs.FileInfo) time.Time {
	t := info.ModTime()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		if a := time.Unix(st.Atimespec.Unix()); a.After(t) {
			return a
		}
	}
	return t
}

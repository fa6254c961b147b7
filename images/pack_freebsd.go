package images

import (
	"errors"
	"io/fs"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func statOf(fi fs.FileInfo) (statInfo, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statInfo{}, errors.New("no stat information")
	}
	si := statInfo{
		uid: int(st.Uid), gid: int(st.Gid),
		mtime: time.Unix(st.Mtimespec.Sec, st.Mtimespec.Nsec),
		nlink: uint64(st.Nlink), dev: uint64(st.Dev), ino: st.Ino,
		major: int64(unix.Major(uint64(st.Rdev))), minor: int64(unix.Minor(uint64(st.Rdev))),
	}
	si.special = specialBits(fi.Mode())
	return si, nil
}

// listXattrs: FreeBSD trees are packed without extended attributes for
// now (docs/images.md); base sets carry none kiln relies on.
func listXattrs(string) (map[string]string, error) { return nil, nil }

package images

import (
	"errors"
	"io/fs"
	"strings"
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
		mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		nlink: st.Nlink, dev: st.Dev, ino: st.Ino,
		major: int64(unix.Major(uint64(st.Rdev))), minor: int64(unix.Minor(uint64(st.Rdev))),
	}
	si.special = specialBits(fi.Mode())
	return si, nil
}

// listXattrs returns path's extended attributes without following a
// symlink, by their Linux names ("user.x", "security.capability").
func listXattrs(path string) (map[string]string, error) {
	sz, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) || sz == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			return nil, err
		}
		val := make([]byte, vsz)
		if vsz > 0 {
			if vsz, err = unix.Lgetxattr(path, name, val); err != nil {
				return nil, err
			}
		}
		out[name] = string(val[:vsz])
	}
	return out, nil
}

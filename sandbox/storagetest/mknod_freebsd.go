package storagetest

import "golang.org/x/sys/unix"

func mknodChar(path string, major, minor uint32) error {
	return unix.Mknod(path, unix.S_IFCHR|0o666, unix.Mkdev(major, minor))
}

// noSuidNoDev reports whether the file system at path is mounted nosuid
// (FreeBSD has no device nodes outside devfs).
func noSuidNoDev(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return st.Flags&unix.MNT_NOSUID != 0, nil
}

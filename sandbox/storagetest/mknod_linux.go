package storagetest

import "golang.org/x/sys/unix"

func mknodChar(path string, major, minor uint32) error {
	return unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor))) //nolint:gosec // G115: Mkdev of two uint32 fits
}

// noSuidNoDev reports whether the file system at path is mounted nosuid
// and nodev.
func noSuidNoDev(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return st.Flags&(unix.ST_NOSUID|unix.ST_NODEV) == unix.ST_NOSUID|unix.ST_NODEV, nil
}

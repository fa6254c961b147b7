package storagetest

import "golang.org/x/sys/unix"

func mknodChar(path string, major, minor uint32) error {
	return unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor))) //nolint:gosec // G115: Mkdev of two uint32 fits
}

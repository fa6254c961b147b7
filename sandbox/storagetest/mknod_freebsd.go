package storagetest

import "golang.org/x/sys/unix"

func mknodChar(path string, major, minor uint32) error {
	return unix.Mknod(path, unix.S_IFCHR|0o666, unix.Mkdev(major, minor))
}

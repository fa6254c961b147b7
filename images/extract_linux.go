package images

import (
	"archive/tar"
	"fmt"

	"golang.org/x/sys/unix"
)

// setXattrs applies hdr's extended attributes to fd; Linux names them with
// their namespace ("user.x", "security.capability") as tar records them.
func setXattrs(fd int, hdr *tar.Header) error {
	for name, value := range xattrs(hdr) {
		if err := unix.Fsetxattr(fd, name, []byte(value), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

func mknodat(dfd int, name string, mode, major, minor uint32) error {
	return unix.Mknodat(dfd, name, mode, int(unix.Mkdev(major, minor))) //nolint:gosec // G115: Mkdev of two uint32 fits the int64 the syscall takes
}

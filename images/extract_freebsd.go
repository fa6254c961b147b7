package images

import (
	"archive/tar"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setXattrs applies hdr's extended attributes to fd. FreeBSD keeps them in
// two namespaces, which tar writes as the "user." and "system." prefixes.
func setXattrs(fd int, hdr *tar.Header) error {
	for name, value := range xattrs(hdr) {
		ns := unix.EXTATTR_NAMESPACE_USER
		attr, ok := strings.CutPrefix(name, "user.")
		if !ok {
			if attr, ok = strings.CutPrefix(name, "system."); !ok {
				return fmt.Errorf("xattr %s: namespace not supported on FreeBSD", name)
			}
			ns = unix.EXTATTR_NAMESPACE_SYSTEM
		}
		b := []byte(value)
		var p uintptr
		if len(b) > 0 {
			p = uintptr(unsafe.Pointer(&b[0]))
		}
		if _, err := unix.ExtattrSetFd(fd, ns, attr, p, len(b)); err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

func mknodat(dfd int, name string, mode, major, minor uint32) error {
	return unix.Mknodat(dfd, name, mode, unix.Mkdev(major, minor))
}

// sysprobe tries the system calls a hostile job would use to reach the
// kernel's soft spots and prints one "name=result" line each: "ok" when the
// call succeeded, else the errno's name. The hostile-job tests build it
// statically into the sandbox's root filesystem.
package main

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	probe("keyctl", func() error {
		_, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_SESSION_KEYRING, 1, 0, 0)
		return err
	})
	probe("add_key", func() error {
		_, err := unix.AddKey("user", "kiln-probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
		return err
	})
	probe("bpf", func() error {
		// BPF_MAP_CREATE of a small array map.
		attr := [5]uint32{unix.BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0}
		fd, _, errno := unix.Syscall(unix.SYS_BPF, 0, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != 0 {
			return errno
		}
		unix.Close(int(fd))
		return nil
	})
	probe("userfaultfd", func() error {
		fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
		if errno != 0 {
			return errno
		}
		unix.Close(int(fd))
		return nil
	})
	probe("perf_event_open", func() error {
		attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK}
		attr.Size = uint32(unsafe.Sizeof(attr))
		fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	probe("unshare_user", func() error { return unix.Unshare(unix.CLONE_NEWUSER) })
	probe("unshare_mount", func() error { return unix.Unshare(unix.CLONE_NEWNS) })
	probe("mount", func() error {
		if err := unix.Mkdir("/tmp/kiln-probe-mnt", 0o700); err != nil && err != unix.EEXIST {
			return err
		}
		return unix.Mount("none", "/tmp/kiln-probe-mnt", "tmpfs", 0, "")
	})
	probe("mknod", func() error { return unix.Mknod("/work/kiln-probe-sda", syscall.S_IFBLK|0o600, int(unix.Mkdev(8, 0))) })
}

func probe(name string, f func() error) {
	err := f()
	var errno syscall.Errno
	switch {
	case err == nil:
		fmt.Printf("%s=ok\n", name)
	case errors.As(err, &errno):
		fmt.Printf("%s=%s\n", name, unix.ErrnoName(errno))
	default:
		fmt.Printf("%s=%v\n", name, err)
	}
}

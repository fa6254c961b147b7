// sysprobe tries the system calls a hostile job would use to reach the
// kernel's soft spots and prints one "name=result" line each: "ok" when the
// call succeeded, else the errno's name. The hostile-job tests build it
// statically into the sandbox's root filesystem.
//
//	sysprobe                    the system calls of the default profile
//	sysprobe btrfs-create DIR   make subvolumes sv1, sv2 and snapshots of / in DIR
//	sysprobe btrfs-destroy DIR  delete the subvolumes sv1 and sv2 in DIR
package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) == 3 {
		btrfs(os.Args[1], os.Args[2])
		return
	}
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

// The btrfs ioctls (linux/btrfs.h) a job must not issue: a subvolume of its
// own escapes its clone's disk limit.
const (
	btrfsIocSnapCreate     = 0x50009401 // _IOW(0x94, 1, struct btrfs_ioctl_vol_args)
	btrfsIocSubvolCreate   = 0x5000940e // _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
	btrfsIocSnapDestroy    = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
	btrfsIocSnapCreateV2   = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
	btrfsIocSubvolCreateV2 = 0x50009418 // _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2)
	btrfsIocSnapDestroyV2  = 0x5000943f // _IOW(0x94, 63, struct btrfs_ioctl_vol_args_v2)
)

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (no qgroup inherit).
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [4040]byte
}

func btrfs(op, dir string) {
	d, err := os.Open(dir)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	root, err := os.Open("/")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ioctl := func(req uint64, arg unsafe.Pointer) error {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, d.Fd(), uintptr(req), uintptr(arg)); e != 0 {
			return e
		}
		return nil
	}
	v1 := func(req uint64, fd int64, name string) func() error {
		return func() error {
			a := volArgs{fd: fd}
			copy(a.name[:], name)
			return ioctl(req, unsafe.Pointer(&a))
		}
	}
	v2 := func(req uint64, fd int64, name string) func() error {
		return func() error {
			a := volArgsV2{fd: fd}
			copy(a.name[:], name)
			return ioctl(req, unsafe.Pointer(&a))
		}
	}
	rootFd := int64(root.Fd())
	switch op {
	case "btrfs-create":
		probe("btrfs_subvol_create", v1(btrfsIocSubvolCreate, 0, "sv1"))
		probe("btrfs_subvol_create_v2", v2(btrfsIocSubvolCreateV2, 0, "sv2"))
		probe("btrfs_snap_create", v1(btrfsIocSnapCreate, rootFd, "snap1"))
		probe("btrfs_snap_create_v2", v2(btrfsIocSnapCreateV2, rootFd, "snap2"))
		// The kernel takes the request as an unsigned int: high bits set
		// are the same request to it.
		probe("btrfs_snap_create_v2_high", v2(1<<32|btrfsIocSnapCreateV2, rootFd, "snap3"))
	case "btrfs-destroy":
		probe("btrfs_snap_destroy", v1(btrfsIocSnapDestroy, 0, "sv1"))
		probe("btrfs_snap_destroy_v2", v2(btrfsIocSnapDestroyV2, 0, "sv2"))
	default:
		fmt.Println("sysprobe: unknown operation", op)
		os.Exit(1)
	}
}

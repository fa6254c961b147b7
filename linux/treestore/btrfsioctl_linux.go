package treestore

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctls a run's clone needs (linux/btrfs.h), so that a run
// starts no btrfs(8) process: a writable snapshot, its disk limit and its
// deletion. Rarer operations (making an image's first subvolume, freezing
// it read-only, enabling quotas) keep using the tool.
const (
	btrfsIocSnapCreateV2 = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
	btrfsIocSnapDestroy  = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
	btrfsIocQgroupLimit  = 0x8030942b // _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)

	btrfsQgroupLimitMaxExcl = 1 << 1
)

// btrfsVolArgs is struct btrfs_ioctl_vol_args.
type btrfsVolArgs struct {
	fd   int64
	name [4088]byte
}

// btrfsVolArgsV2 is struct btrfs_ioctl_vol_args_v2 (no qgroup inherit).
type btrfsVolArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [4040]byte
}

// btrfsQgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args.
type btrfsQgroupLimitArgs struct {
	qgroupid uint64
	flags    uint64
	maxRfer  uint64
	maxExcl  uint64
	rsvRfer  uint64
	rsvExcl  uint64
}

func btrfsIoctl(fd *os.File, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd.Fd(), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// openDir opens the directory path for an ioctl.
func openDir(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// btrfsSnapshot makes dst a writable snapshot of the subvolume src, as
// `btrfs subvolume snapshot src dst` does.
func btrfsSnapshot(src, dst string) error {
	s, err := openDir(src)
	if err != nil {
		return fmt.Errorf("btrfs snapshot of %s: %w", src, err)
	}
	defer s.Close()
	parent, err := openDir(filepath.Dir(dst))
	if err != nil {
		return fmt.Errorf("btrfs snapshot at %s: %w", dst, err)
	}
	defer parent.Close()
	name := filepath.Base(dst)
	var args btrfsVolArgsV2
	if len(name) >= len(args.name) {
		return fmt.Errorf("btrfs snapshot at %s: name too long", dst)
	}
	args.fd = int64(s.Fd()) //nolint:gosec // G115: a file descriptor is a small int
	copy(args.name[:], name)
	if err := btrfsIoctl(parent, btrfsIocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("btrfs snapshot of %s at %s: %w", src, dst, err)
	}
	return nil
}

// btrfsDeleteSubvolume deletes the (empty of other subvolumes) subvolume
// at path, as `btrfs subvolume delete path` does.
func btrfsDeleteSubvolume(path string) error {
	parent, err := openDir(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("btrfs delete %s: %w", path, err)
	}
	defer parent.Close()
	name := filepath.Base(path)
	var args btrfsVolArgs
	if len(name) >= len(args.name) {
		return fmt.Errorf("btrfs delete %s: name too long", path)
	}
	copy(args.name[:], name)
	if err := btrfsIoctl(parent, btrfsIocSnapDestroy, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("btrfs delete %s: %w", path, err)
	}
	return nil
}

// btrfsLimitExclusive limits what the subvolume at path may hold that no
// other subvolume shares to limit bytes, as `btrfs qgroup limit -e limit
// path` does (quotas must be enabled).
func btrfsLimitExclusive(path string, limit int64) error {
	f, err := openDir(path)
	if err != nil {
		return fmt.Errorf("btrfs qgroup limit of %s: %w", path, err)
	}
	defer f.Close()
	// qgroupid 0: the subvolume's own qgroup.
	args := btrfsQgroupLimitArgs{flags: btrfsQgroupLimitMaxExcl, maxExcl: uint64(limit)} //nolint:gosec // G115: limit > 0 (mountClone)
	if err := btrfsIoctl(f, btrfsIocQgroupLimit, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("btrfs qgroup limit of %s: %w", path, err)
	}
	return nil
}

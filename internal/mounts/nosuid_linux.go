package mounts

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// NoSuidNoDev bind-mounts dir on itself nosuid and nodev, unless it is that
// already, so that what a job leaves there is never a setuid binary or a
// device to the host (hooks, tools walking a clone or a run's /out). The
// caller unmounts it (UnmountBelow) before removing dir.
func NoSuidNoDev(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("nosuid,nodev mount of %s: %w", dir, err)
	}
	const want = unix.ST_NOSUID | unix.ST_NODEV
	if st.Flags&want == want {
		return nil
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("nosuid,nodev mount of %s: bind: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("nosuid,nodev mount of %s: remount nosuid,nodev: %w", dir, err)
	}
	return nil
}

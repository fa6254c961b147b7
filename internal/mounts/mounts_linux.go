// Package mounts finds and removes the mounts below a directory, for the
// storage backends, the image builder and the tests, which must never
// delete a tree while something is still mounted inside it.
package mounts

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Below returns the mount points at or below dir (absolute, clean, no
// symlinks), deepest first.
func Below(dir string) ([]string, error) {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mounts below %s: %w", dir, err)
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// UnmountBelow unmounts everything mounted at or below dir, deepest first.
func UnmountBelow(dir string) error {
	mps, err := Below(dir)
	if err != nil {
		return err
	}
	for _, mp := range mps {
		if err := Unmount(mp); err != nil {
			return err
		}
	}
	return nil
}

// Unmount unmounts mp without following a symlink in its place, detaching
// lazily when it is busy (a process may still hold a file open; the mount
// goes away when it lets go). A path that is not (or no longer) a mount
// point is not an error.
func Unmount(mp string) error {
	err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		slog.Warn("mount busy, detaching lazily", "path", mp)
		err = unix.Unmount(mp, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	return nil
}

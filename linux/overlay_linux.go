package linux

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Overlay is the default storage backend: snapshots are plain directory
// trees and a clone is an overlayfs mount with the snapshot as its lower
// layer, so it works on any filesystem overlayfs accepts as upper (ext4,
// xfs, tmpfs). Making a clone costs a mount, not a copy; building an image
// on a parent costs a full copy (reflinked where the filesystem can).
//
// Layout under root: images/<name>/<version>/ (snapshot trees),
// builds/<id>/root (build areas, with builds/<id>.lock held by the building
// process), clones/<runID>/{upper,work,merged} with the overlay at merged
// and the snapshot ref recorded in clones/<runID>/snapshot.
//
// Safe for concurrent use; see sandbox.Storage and sandbox.ImageStore.
type Overlay struct {
	*treeStore
}

// NewOverlay opens (creating if needed) overlay storage under root, an
// absolute path without ',' or ':' (overlayfs option separators).
func NewOverlay(root string) (*Overlay, error) {
	s, err := newTreeStore(root, overlayOps{})
	if err != nil {
		return nil, err
	}
	return &Overlay{s}, nil
}

type overlayOps struct{}

func (overlayOps) kind() string { return "overlay" }

func (overlayOps) newTree(ctx context.Context, dst, parent string) error {
	if parent == "" {
		return os.Mkdir(dst, 0o755)
	}
	// cp -a keeps owners, modes, times, links, device nodes and xattrs
	// (those Go's standard library would each need by hand);
	// --reflink=auto shares blocks where the filesystem can.
	out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", "--", parent, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy %s: %w: %s", parent, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (overlayOps) freeze(ctx context.Context, src, dst string) error {
	return os.Rename(src, dst)
}

func (overlayOps) removeTree(ctx context.Context, path string) error {
	return os.RemoveAll(path)
}

func (overlayOps) cloneRoot(dir string) string { return filepath.Join(dir, "merged") }

func (o overlayOps) mountClone(ctx context.Context, snap, dir string) (string, error) {
	merged := o.cloneRoot(dir)
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	mounted, err := isMountPoint(merged)
	if err != nil || mounted {
		return merged, err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", snap, filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	// volatile: a clone is thrown away, never remounted, so nothing it
	// writes needs to reach the disk; without it every unmount syncs the
	// whole filesystem under the clones. Kernels before 5.10 refuse it.
	// nosuid, nodev: what a job leaves in its clone is never a setuid
	// binary or a device to the host (hooks, tools walking the clone).
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	err = unix.Mount("overlay", merged, "overlay", flags, opts+",volatile")
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mount("overlay", merged, "overlay", flags, opts)
	}
	if err != nil {
		return "", fmt.Errorf("mount overlay at %s: %w", merged, err)
	}
	return merged, nil
}

func (o overlayOps) removeClone(ctx context.Context, dir string) error {
	return nil // unmounted by the caller; the directories go with dir
}

// isMountPoint reports whether path is the root of a mount: its device
// differs from its parent's (enough for overlay, which gets its own device).
func isMountPoint(path string) (bool, error) {
	var st, pst unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(path), &pst); err != nil {
		return false, err
	}
	return st.Dev != pst.Dev, nil
}

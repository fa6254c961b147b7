package treestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
// A clone with a disk limit keeps its upper and work directories on a
// filesystem of its own, bounded to the limit: a sparse file
// clones/<runID>/disk.img holding ext4 (no journal: a clone is never
// remounted after a crash), loop-mounted at clones/<runID>/disk. A run
// that writes past the limit gets ENOSPC; the host's filesystem only ever
// holds the blocks the run really wrote. The empty filesystem is made once
// per size (disk-templates/<bytes>.img, about 4 MiB of data for 10 GiB) and
// copied sparse for each clone, so a run costs a small copy and a loop
// mount, both done in-process (see docs/benchmarks.md); tmpfs would be
// cheaper to make but would
// hold the run's files in RAM.
//
// Safe for concurrent use; see sandbox.Storage and sandbox.ImageStore.
type Overlay struct {
	*treeStore
}

// NewOverlay opens (creating if needed) overlay storage under root, an
// absolute path without ',' or ':' (overlayfs option separators).
func NewOverlay(root string) (*Overlay, error) {
	s, err := newTreeStore(root, overlayOps{templates: filepath.Join(root, "disk-templates")})
	if err != nil {
		return nil, err
	}
	return &Overlay{s}, nil
}

type overlayOps struct {
	templates string // empty ext4 images by size, for disk-limited clones
}

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

// scratch: a limited clone's own filesystem (mountDisk), beside its upper
// and work dirs, which the run reaches only through its overlay.
func (overlayOps) scratch(dir string) string {
	if !diskImageExists(dir) {
		return ""
	}
	return filepath.Join(dir, "disk", "scratch")
}

// scratchInRoot: none, the run does not see its filesystem's root.
func (overlayOps) scratchInRoot() string { return "" }

func (o overlayOps) mountClone(ctx context.Context, snap, dir string, limit int64) (string, error) {
	merged := o.cloneRoot(dir)
	if err := os.Mkdir(merged, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	mounted, err := isMountPoint(merged)
	if err != nil || mounted {
		return merged, err
	}
	rw := dir
	if _, err := os.Stat(filepath.Join(dir, "upper")); err != nil && (limit > 0 || diskImageExists(dir)) {
		// A limited clone (or one whose mount went away).
		if rw, err = o.mountDisk(ctx, dir, limit); err != nil {
			return "", err
		}
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(rw, d), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", snap, filepath.Join(rw, "upper"), filepath.Join(rw, "work"))
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

// diskImageExists reports whether dir holds a limited clone's disk image.
func diskImageExists(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, "disk.img"))
	return err == nil
}

// mountDisk makes (when missing) dir/disk.img, a sparse file of limit bytes
// holding an empty ext4 filesystem, and mounts it at dir/disk (nodev,
// nosuid), which it returns. The loop device goes away with the unmount.
func (o overlayOps) mountDisk(ctx context.Context, dir string, limit int64) (string, error) {
	img, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "disk")
	if err := os.Mkdir(mnt, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if mounted, err := isMountPoint(mnt); err != nil || mounted {
		return mnt, err
	}
	if !diskImageExists(dir) {
		if limit <= 0 {
			return "", fmt.Errorf("clone %s: no disk image and no limit to make one", dir)
		}
		tmpl, err := o.template(ctx, limit)
		if err != nil {
			return "", err
		}
		tmp := img + ".tmp"
		// Left by a crash mid-copy.
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		if err := copySparse(tmpl, tmp); err != nil {
			return "", fmt.Errorf("copy the disk image: %w", err)
		}
		if err := os.Rename(tmp, img); err != nil {
			return "", err
		}
	}
	// noinit_itable: no kernel thread zeroing the inode tables of a
	// filesystem that lives one run (unused inodes are known as such
	// without it).
	if err := mountLoop(img, mnt, "ext4", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOATIME, "noinit_itable"); err != nil {
		return "", fmt.Errorf("mount the disk-limited filesystem: %w", err)
	}
	return mnt, nil
}

// template returns the empty ext4 image of size bytes, making it first if
// needed. Concurrent makers of one size each write their own and the last
// rename wins; every one of them is a good image.
func (o overlayOps) template(ctx context.Context, size int64) (string, error) {
	// The name's version changes with the mkfs options, so a host's
	// templates made with older ones are not used again.
	p := filepath.Join(o.templates, strconv.FormatInt(size, 10)+templateVersion)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(o.templates, 0o700); err != nil {
		return "", err
	}
	o.removeOldTemplates()
	f, err := os.CreateTemp(o.templates, ".tmp-*")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename; removes a failed one
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("disk image: %w", err)
	}
	// No journal, lazy inode tables and no blocks reserved for growing
	// it (at 10 GiB, 4 MiB of the 4.3 MiB every clone copies): the
	// filesystem lives as long as one run and is never checked, remounted
	// after a crash or resized.
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode",
		"-E", "lazy_itable_init=1,nodiscard", "--", tmp).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 for the disk limit: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return p, os.Rename(tmp, p)
}

// templateVersion ends the name of a template made with today's mkfs
// options.
const templateVersion = ".2.img"

// removeOldTemplates removes the templates made with older mkfs options
// (named SIZE.img): nothing uses them again. Best effort.
func (o overlayOps) removeOldTemplates() {
	old, _ := filepath.Glob(filepath.Join(o.templates, "*.img"))
	for _, p := range old {
		if !strings.HasSuffix(p, templateVersion) {
			_ = os.Remove(p)
		}
	}
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

package treestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/mounts"
)

// Btrfs keeps images as read-only btrfs snapshots and makes each clone a
// writable snapshot of one: clone and build-on-parent cost O(1), whatever
// the image's size.
//
// Layout under root (a directory on btrfs): images/<name>/<version>
// (read-only snapshots), builds/<id>/root (build subvolumes, with
// builds/<id>.lock held by the building process), clones/<runID>/root
// (writable snapshots) with the snapshot ref in clones/<runID>/snapshot.
//
// What every run does (snapshot its clone, limit its disk, delete it) goes
// through btrfs's ioctls (btrfsioctl_linux.go), so a run starts no process
// for its storage; what happens once per image or filesystem (its first
// subvolume, the read-only snapshot, enabling quotas) uses the btrfs(8)
// tool. Deleting uses the oldest form of the ioctl, which every kernel
// since 2.6.33 knows.
//
// Safe for concurrent use; see sandbox.Storage and sandbox.ImageStore.
type Btrfs struct {
	*treeStore
}

// NewBtrfs opens (creating if needed) btrfs storage under root, which must
// be on a btrfs filesystem.
func NewBtrfs(root string) (*Btrfs, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("btrfs storage: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return nil, fmt.Errorf("btrfs storage: statfs %s: %w", root, err)
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return nil, fmt.Errorf("btrfs storage: %s is not on a btrfs filesystem (filesystem magic %#x); use storage kind overlay or a btrfs mount", root, st.Type)
	}
	if _, err := exec.LookPath("btrfs"); err != nil {
		return nil, fmt.Errorf("btrfs storage: %w (install btrfs-progs)", err)
	}
	s, err := newTreeStore(root, &btrfsOps{})
	if err != nil {
		return nil, err
	}
	return &Btrfs{s}, nil
}

type btrfsOps struct {
	mu    sync.Mutex
	quota bool // quotas are known to be enabled on the filesystem
}

func (*btrfsOps) kind() string { return "btrfs" }

func btrfsCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "btrfs", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("btrfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (*btrfsOps) newTree(ctx context.Context, dst, parent string) error {
	if parent == "" {
		return btrfsCmd(ctx, "subvolume", "create", dst)
	}
	return btrfsCmd(ctx, "subvolume", "snapshot", parent, dst)
}

func (*btrfsOps) freeze(ctx context.Context, src, dst string) error {
	// The build subvolume itself stays writable; the caller removes it.
	return btrfsCmd(ctx, "subvolume", "snapshot", "-r", src, dst)
}

// isSubvolume reports whether path is the root of a subvolume (btrfs gives
// every subvolume root the inode number 256).
func isSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == 256, nil
}

// removeTree deletes the subvolume at path and every subvolume nested in
// it (a job may create its own; btrfs refuses to delete a subvolume that
// holds another). A plain directory is removed with its content.
func (*btrfsOps) removeTree(ctx context.Context, path string) error {
	sub, err := isSubvolume(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var nested []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == path || !d.IsDir() {
			return err
		}
		if ok, err := isSubvolume(p); err != nil {
			return err
		} else if ok {
			nested = append(nested, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("find nested subvolumes of %s: %w", path, err)
	}
	// A read-only snapshot cannot have subvolumes removed from under it;
	// but it cannot have gained any either, so nested is empty there.
	for i := len(nested) - 1; i >= 0; i-- { // WalkDir order: deepest last
		if err := btrfsDeleteSubvolume(nested[i]); err != nil {
			return err
		}
	}
	if !sub {
		return os.RemoveAll(path)
	}
	return btrfsDeleteSubvolume(path)
}

func (*btrfsOps) cloneRoot(dir string) string { return filepath.Join(dir, "root") }

// scratch: none; the qgroup bounds the clone's subvolume, which is all the
// run's root (a cache layer of a btrfs run stays on the data dir's
// filesystem: docs/caches.md).
func (*btrfsOps) scratch(string) string { return "" }

func (o *btrfsOps) mountClone(ctx context.Context, snap, dir string, limit int64) (string, error) {
	root := o.cloneRoot(dir)
	ok, err := isSubvolume(root)
	switch {
	case err == nil && !ok:
		// Not ours to have made: never snapshot over something else.
		return "", fmt.Errorf("%s exists and is not a subvolume", root)
	case errors.Is(err, fs.ErrNotExist):
		if limit > 0 {
			if err := o.enableQuota(ctx, dir); err != nil {
				return "", err
			}
		}
		if err := btrfsSnapshot(snap, root); err != nil {
			return "", err
		}
		if limit > 0 {
			// The exclusive count is what the clone holds that its
			// snapshot does not: what the run wrote.
			if err := btrfsLimitExclusive(root, limit); err != nil {
				return "", errors.Join(err, o.removeTree(ctx, root))
			}
		}
	case err != nil:
		return "", err
	}
	return root, mounts.NoSuidNoDev(root)
}

// enableQuota turns on btrfs quotas (qgroups) on the filesystem of path,
// once per process: the first time costs a rescan of the filesystem, and
// every write is accounted from then on.
func (o *btrfsOps) enableQuota(ctx context.Context, path string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.quota {
		return nil
	}
	if err := btrfsCmd(ctx, "quota", "enable", path); err != nil {
		return fmt.Errorf("disk limits need btrfs quotas: %w", err)
	}
	if err := btrfsCmd(ctx, "quota", "rescan", "-w", path); err != nil && !strings.Contains(err.Error(), "in progress") {
		return err
	}
	o.quota = true
	return nil
}

func (o *btrfsOps) removeClone(ctx context.Context, dir string) error {
	return o.removeTree(ctx, o.cloneRoot(dir))
}

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

	"github.com/kiln-build/kiln/errdefs"
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
	// The name is a limited clone's scratch, made empty in every clone:
	// an image that holds it would not get it to its runs.
	if _, err := os.Lstat(filepath.Join(src, scratchName)); err == nil {
		return fmt.Errorf("the tree has /%s, a name kiln's btrfs storage keeps for itself: %w", scratchName, errdefs.ErrInvalid)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
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

// scratchName is the directory in a limited clone's subvolume that holds
// its scratch: inside the subvolume, so the clone's own qgroup counts it
// (a second subvolume cannot share a limit with the clone: docs/caches.md).
// The run reaches it at ScratchInRoot, which its launcher masks; the host
// reaches it only through the bind mount at <dir>/scratch, made before any
// job ran, so no name the job can change is looked up on the host's side.
const scratchName = ".kiln-scratch"

// scratch: <dir>/scratch, the bind mount of the clone's scratchName, when
// the clone is limited.
func (*btrfsOps) scratch(dir string) string {
	p := filepath.Join(dir, "scratch")
	if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
		return ""
	}
	return p
}

func (*btrfsOps) scratchInRoot() string { return "/" + scratchName }

// makeScratch makes the scratch of a fresh clone (no job has run in it):
// an empty scratchName, whatever the image had under that name being the
// clone's own copy (freeze refuses new images with one).
func makeScratch(root string) error {
	p := filepath.Join(root, scratchName)
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("scratch: %w", err)
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		return fmt.Errorf("scratch: %w", err)
	}
	return nil
}

// bindScratch bind-mounts root's scratchName at <dir>/scratch, nosuid and
// nodev, unless it is mounted there already. The directory is opened
// beneath root without following a symlink or leaving the subvolume, and
// bound through that descriptor: when a job has run in the clone (a
// re-Clone after a reboot), a name of its making leads nowhere but into
// its own clone.
func bindScratch(root, dir string) error {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("scratch: open %s: %w", root, err)
	}
	defer unix.Close(rootFd)
	fd, err := unix.Openat2(rootFd, scratchName, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return fmt.Errorf("scratch: open %s in %s: %w", scratchName, root, err)
	}
	defer unix.Close(fd)
	mp := filepath.Join(dir, "scratch")
	if err := os.Mkdir(mp, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("scratch: %w", err)
	}
	var src, dst unix.Stat_t
	if err := unix.Fstat(fd, &src); err != nil {
		return fmt.Errorf("scratch: %w", err)
	}
	if err := unix.Lstat(mp, &dst); err != nil {
		return fmt.Errorf("scratch: %w", err)
	}
	if src.Dev == dst.Dev && src.Ino == dst.Ino {
		return nil // bound already
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", fd), mp, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("scratch: bind %s/%s at %s: %w", root, scratchName, mp, err)
	}
	return mounts.NoSuidNoDev(mp)
}

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
			if err := makeScratch(root); err != nil {
				return "", errors.Join(err, o.removeTree(ctx, root))
			}
		}
	case err != nil:
		return "", err
	}
	if err := mounts.NoSuidNoDev(root); err != nil {
		return "", err
	}
	// A limited clone has its scratch; one whose bind mount is gone (a
	// reboot) gets it back.
	if limit > 0 || o.scratch(dir) != "" {
		if err := bindScratch(root, dir); err != nil {
			return "", err
		}
	}
	return root, nil
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

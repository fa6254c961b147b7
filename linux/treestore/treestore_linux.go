package treestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/durable"
	"github.com/kiln-build/kiln/internal/flock"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/internal/storekit"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// treeOps is what differs between the directory-tree backends (overlay,
// btrfs); treeStore does the rest: layout, names, build locks, listing.
// Every method may be called concurrently for different paths.
type treeOps interface {
	kind() string
	// newTree makes dst a writable tree: empty, or a copy of the snapshot
	// tree parent when parent != "". dst does not exist yet.
	newTree(ctx context.Context, dst, parent string) error
	// freeze turns the finished build tree src into a read-only tree at
	// dst (which does not exist, on the same filesystem). It may move src
	// or leave it for the caller to remove.
	freeze(ctx context.Context, src, dst string) error
	// removeTree removes a build or snapshot tree. A missing path is fine.
	removeTree(ctx context.Context, path string) error
	// mountClone makes dir/... a writable copy of the snapshot tree snap and
	// returns its root. dir exists. With limit > 0 the bytes written into
	// the copy are bounded to limit (sandbox.DiskLimiter). Idempotent: a
	// clone already there is (re)mounted if needed and returned.
	mountClone(ctx context.Context, snap, dir string, limit int64) (root string, err error)
	// cloneRoot is where mountClone puts the root in dir.
	cloneRoot(dir string) string
	// scratch is the Clone.Scratch of the clone in dir: a directory on
	// its disk-limited filesystem that the run does not see, or "".
	scratch(dir string) string
	// scratchInRoot is the Clone.ScratchInRoot of a clone with a scratch.
	scratchInRoot() string
	// removeClone tears down what mountClone made in dir (mounts below dir
	// are already gone); dir itself is removed by the caller.
	removeClone(ctx context.Context, dir string) error
}

// trashPrefix marks a snapshot being deleted (not a valid name, so never listed).
const trashPrefix = ".deleting-"

// snapshotFile in a clone's directory records the "image@version" it came from.
const snapshotFile = "snapshot"

// treeStore lays out a backend under root:
//
//	images/<name>/<version>/   committed snapshot trees (never written again)
//	builds/<id>.lock           flock held by the building process
//	builds/<id>/root           build areas
//	clones/<runID>/            per-run clones, with the snapshot file
type treeStore struct {
	root string
	ops  treeOps

	builds storekit.Builds
	runs   storekit.Keyed
	// snaps orders Clone (read) against DeleteSnapshot and Commit (write)
	// within this process, so a snapshot cannot vanish under a new clone.
	snaps sync.RWMutex
}

func newTreeStore(root string, ops treeOps) (*treeStore, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("%s storage root %q: %w: must be absolute", ops.kind(), root, errdefs.ErrInvalid)
	}
	// overlay's mount options are split on ',' and ':'.
	if strings.ContainsAny(root, ",:\\\n") {
		return nil, fmt.Errorf("%s storage root %q: %w: must not contain ',', ':' or '\\'", ops.kind(), root, errdefs.ErrInvalid)
	}
	s := &treeStore{root: filepath.Clean(root), ops: ops}
	for _, d := range []string{"images", "builds", "clones"} {
		if err := os.MkdirAll(filepath.Join(s.root, d), 0o700); err != nil {
			return nil, fmt.Errorf("%s storage: %w", ops.kind(), err)
		}
	}
	return s, nil
}

func (s *treeStore) Kind() string { return s.ops.kind() }

func parseRef(ref string) (image, version string, err error) {
	image, version, ok := storekit.ValidRef(ref)
	if !ok {
		return "", "", fmt.Errorf("snapshot %q: %w: want image@version with valid names", ref, errdefs.ErrInvalid)
	}
	return image, version, nil
}

func (s *treeStore) imageDir(image string) string { return filepath.Join(s.root, "images", image) }
func (s *treeStore) snapDir(image, version string) string {
	return filepath.Join(s.root, "images", image, version)
}

// frozenPath is where Commit puts the finished tree before it renames it
// to its version: in the image's directory, because btrfs refuses to move
// a read-only subvolume to another directory. The leading dot keeps it
// out of listings (not a valid name).
func (s *treeStore) frozenPath(image, id string) string {
	return filepath.Join(s.root, "images", image, ".build-"+id)
}
func (s *treeStore) buildDir(id string) string { return filepath.Join(s.root, "builds", id) }
func (s *treeStore) lockPath(id string) string { return filepath.Join(s.root, "builds", id+".lock") }
func (s *treeStore) cloneDir(runID string) string {
	return filepath.Join(s.root, "clones", runID)
}

// Clone implements sandbox.Storage.
func (s *treeStore) Clone(ctx context.Context, snapshot, runID string) (sandbox.Clone, error) {
	return s.clone(ctx, snapshot, runID, 0)
}

// CloneLimited implements sandbox.DiskLimiter.
func (s *treeStore) CloneLimited(ctx context.Context, snapshot, runID string, limit int64) (sandbox.Clone, error) {
	if limit <= 0 {
		return sandbox.Clone{}, fmt.Errorf("disk limit %d: %w", limit, errdefs.ErrInvalid)
	}
	return s.clone(ctx, snapshot, runID, limit)
}

func (s *treeStore) clone(ctx context.Context, snapshot, runID string, limit int64) (sandbox.Clone, error) {
	image, version, err := parseRef(snapshot)
	if err != nil {
		return sandbox.Clone{}, err
	}
	if err := storekit.CheckName("run id", runID); err != nil {
		return sandbox.Clone{}, err
	}
	defer s.runs.Lock(runID)()
	s.snaps.RLock()
	defer s.snaps.RUnlock()

	snap := s.snapDir(image, version)
	if _, err := os.Stat(snap); errors.Is(err, fs.ErrNotExist) {
		return sandbox.Clone{}, fmt.Errorf("snapshot %s: %w", snapshot, errdefs.ErrNotFound)
	} else if err != nil {
		return sandbox.Clone{}, err
	}
	dir := s.cloneDir(runID)
	rec, err := os.ReadFile(filepath.Join(dir, snapshotFile))
	switch {
	case err == nil && string(rec) != snapshot:
		return sandbox.Clone{}, fmt.Errorf("run %s already has a clone of %s: %w", runID, rec, errdefs.ErrExists)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return sandbox.Clone{}, err
	case err != nil:
		// Recorded before anything else, so List and DeleteSnapshot see a
		// half-made clone too. Not flushed: after a reboot no run holds
		// the clone, the reaper destroys it, and its snapshot need not be
		// known for that.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return sandbox.Clone{}, err
		}
		if err := durable.Replace(filepath.Join(dir, snapshotFile), []byte(snapshot), 0o600); err != nil {
			return sandbox.Clone{}, err
		}
	}
	root, err := s.ops.mountClone(ctx, snap, dir, limit)
	if err != nil {
		return sandbox.Clone{}, fmt.Errorf("clone %s for run %s: %w", snapshot, runID, err)
	}
	c := sandbox.Clone{RunID: runID, Snapshot: snapshot, Root: root, Scratch: s.ops.scratch(dir)}
	if c.Scratch != "" {
		c.ScratchInRoot = s.ops.scratchInRoot()
	}
	return c, nil
}

// Destroy implements sandbox.Storage.
func (s *treeStore) Destroy(ctx context.Context, runID string) error {
	if err := storekit.CheckName("run id", runID); err != nil {
		return err
	}
	defer s.runs.Lock(runID)()
	dir := s.cloneDir(runID)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// A launcher may have left bind mounts inside the clone; removing files
	// through one would delete host data.
	if err := mounts.UnmountBelow(dir); err != nil {
		return fmt.Errorf("destroy clone of %s: %w", runID, err)
	}
	if err := s.ops.removeClone(ctx, dir); err != nil {
		return fmt.Errorf("destroy clone of %s: %w", runID, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("destroy clone of %s: %w", runID, err)
	}
	return nil
}

// List implements sandbox.Storage. A clone whose creation was interrupted
// is listed too (with the snapshot it was meant to be of), so the reaper
// can destroy it.
func (s *treeStore) List(ctx context.Context) ([]sandbox.Clone, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "clones"))
	if err != nil {
		return nil, err
	}
	var out []sandbox.Clone
	for _, e := range ents {
		if !e.IsDir() || !names.Valid(e.Name()) {
			continue
		}
		dir := filepath.Join(s.root, "clones", e.Name())
		rec, err := os.ReadFile(filepath.Join(dir, snapshotFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		out = append(out, sandbox.Clone{RunID: e.Name(), Snapshot: string(rec), Root: s.ops.cloneRoot(dir)})
	}
	return out, nil
}

// Begin implements sandbox.ImageStore.
func (s *treeStore) Begin(ctx context.Context, image, parent string) (sandbox.Build, error) {
	if err := storekit.CheckName("image", image); err != nil {
		return sandbox.Build{}, err
	}
	var from string
	if parent != "" {
		if err := storekit.CheckName("version", parent); err != nil {
			return sandbox.Build{}, err
		}
		from = s.snapDir(image, parent)
	}
	id := storekit.NewID()
	// The lock exists and is held before the build directory appears, so
	// Leftovers never mistakes a build being set up for a dead one.
	lock, err := flock.TryLock(s.lockPath(id), 0o600)
	if err != nil {
		return sandbox.Build{}, fmt.Errorf("begin build of %s: %w", image, err)
	}
	fail := func(err error) (sandbox.Build, error) {
		_ = s.ops.removeTree(context.WithoutCancel(ctx), filepath.Join(s.buildDir(id), "root"))
		_ = os.RemoveAll(s.buildDir(id))
		_ = lock.Remove()
		return sandbox.Build{}, fmt.Errorf("begin build of %s: %w", image, err)
	}
	if err := os.Mkdir(s.buildDir(id), 0o700); err != nil {
		return fail(err)
	}
	if from != "" {
		s.snaps.RLock()
		defer s.snaps.RUnlock()
		if _, err := os.Stat(from); errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("parent %s@%s: %w", image, parent, errdefs.ErrNotFound))
		}
	}
	root := filepath.Join(s.buildDir(id), "root")
	if err := s.ops.newTree(ctx, root, from); err != nil {
		return fail(err)
	}
	s.builds.Add(id, lock)
	return sandbox.Build{Image: image, ID: id, Root: root}, nil
}

// Commit implements sandbox.ImageStore.
func (s *treeStore) Commit(ctx context.Context, b sandbox.Build, version string) (sandbox.SnapshotInfo, error) {
	if err := storekit.CheckBuild(b.Image, b.ID); err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	if err := storekit.CheckName("version", version); err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	if _, ok := s.builds.Get(b.ID); !ok {
		return sandbox.SnapshotInfo{}, fmt.Errorf("build %s of %s is not open here: %w", b.ID, b.Image, errdefs.ErrNotFound)
	}
	root := filepath.Join(s.buildDir(b.ID), "root")
	now := time.Now()
	// The root's mtime is the snapshot's creation time: nothing writes to
	// a committed tree again.
	if err := os.Chtimes(root, now, now); err != nil {
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	// Build tools rarely fsync; make the tree durable before it becomes
	// visible, so a crash cannot leave a committed but torn image.
	if err := syncfs(root); err != nil {
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	s.snaps.Lock()
	defer s.snaps.Unlock()
	if err := os.MkdirAll(s.imageDir(b.Image), 0o700); err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	frozen := s.frozenPath(b.Image, b.ID)
	if err := s.ops.freeze(ctx, root, frozen); err != nil {
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	dst := s.snapDir(b.Image, version)
	// RENAME_NOREPLACE: a plain rename would replace an empty directory, and
	// two builds racing for one version must not both win.
	if err := unix.Renameat2(unix.AT_FDCWD, frozen, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		// Back to a writable build, so the caller can Abort or pick another version.
		if _, serr := os.Lstat(root); errors.Is(serr, fs.ErrNotExist) {
			_ = os.Rename(frozen, root)
		} else {
			_ = s.ops.removeTree(context.WithoutCancel(ctx), frozen)
		}
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, errdefs.ErrExists)
		}
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	if err := durable.SyncDir(s.imageDir(b.Image)); err != nil {
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	if lock, ok := s.builds.Take(b.ID); ok {
		// What freeze left of the build; Leftovers retries if this fails.
		if err := s.removeBuild(ctx, b.ID, lock); err != nil {
			slog.Warn("remove committed build area", "build", b.ID, "err", err)
		}
	}
	return s.info(b.Image, version)
}

// Abort implements sandbox.ImageStore. A build of another process is only
// removed if that process is gone.
func (s *treeStore) Abort(ctx context.Context, b sandbox.Build) error {
	if err := storekit.CheckBuild(b.Image, b.ID); err != nil {
		return err
	}
	lock, ok := s.builds.Take(b.ID)
	if !ok {
		if _, err := os.Lstat(s.buildDir(b.ID)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		var err error
		if lock, err = flock.TryLock(s.lockPath(b.ID), 0o600); errors.Is(err, flock.ErrHeld) {
			return fmt.Errorf("abort build %s: %w: another process is building it", b.ID, errdefs.ErrBusy)
		} else if err != nil {
			return fmt.Errorf("abort build %s: %w", b.ID, err)
		}
	}
	return s.removeBuild(ctx, b.ID, lock)
}

// removeBuild removes the build area of id while holding its lock, then the lock.
func (s *treeStore) removeBuild(ctx context.Context, id string, lock *flock.Lock) error {
	dir := s.buildDir(id)
	frozen, err := filepath.Glob(s.frozenPath("*", id))
	for _, f := range frozen {
		err = errors.Join(err, s.ops.removeTree(ctx, f))
	}
	err = errors.Join(err, s.ops.removeTree(ctx, filepath.Join(dir, "root")))
	if err == nil {
		err = os.RemoveAll(dir)
	}
	if err != nil {
		// Keep the lock file so a later Leftovers retries.
		return errors.Join(fmt.Errorf("remove build %s: %w", id, err), lock.Close())
	}
	return lock.Remove()
}

// Images implements sandbox.ImageStore.
func (s *treeStore) Images(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "images"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || !names.Valid(e.Name()) {
			continue
		}
		vs, err := s.versions(e.Name())
		if err != nil {
			return nil, err
		}
		if len(vs) > 0 {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (s *treeStore) versions(image string) ([]string, error) {
	ents, err := os.ReadDir(s.imageDir(image))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && names.Valid(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (s *treeStore) info(image, version string) (sandbox.SnapshotInfo, error) {
	fi, err := os.Stat(s.snapDir(image, version))
	if errors.Is(err, fs.ErrNotExist) {
		return sandbox.SnapshotInfo{}, fmt.Errorf("snapshot %s@%s: %w", image, version, errdefs.ErrNotFound)
	}
	if err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	return sandbox.SnapshotInfo{Image: image, Version: version, Created: fi.ModTime()}, nil
}

// Snapshots implements sandbox.ImageStore. Size is 0: summing a tree on
// every listing costs too much for a best-effort number.
func (s *treeStore) Snapshots(ctx context.Context, image string) ([]sandbox.SnapshotInfo, error) {
	if err := storekit.CheckName("image", image); err != nil {
		return nil, err
	}
	vs, err := s.versions(image)
	if err != nil {
		return nil, err
	}
	var out []sandbox.SnapshotInfo
	for _, v := range vs {
		si, err := s.info(image, v)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, si)
	}
	return storekit.OldestFirst(image, out)
}

// DeleteSnapshot implements sandbox.ImageStore.
func (s *treeStore) DeleteSnapshot(ctx context.Context, image, version string) error {
	if err := storekit.CheckName("image", image); err != nil {
		return err
	}
	if err := storekit.CheckName("version", version); err != nil {
		return err
	}
	s.snaps.Lock()
	defer s.snaps.Unlock()
	ref := image + "@" + version
	clones, err := s.List(ctx)
	if err != nil {
		return err
	}
	if err := storekit.NoCloneOf(ref, clones); err != nil {
		return err
	}
	// Renamed aside first (within its directory: btrfs cannot move a
	// read-only subvolume elsewhere) so the snapshot disappears at once and
	// a failed removal leaves no half-deleted version; Leftovers retries.
	trash := filepath.Join(s.imageDir(image), trashPrefix+version+"."+storekit.NewID())
	if err := os.Rename(s.snapDir(image, version), trash); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", ref, err)
	}
	if err := s.ops.removeTree(ctx, trash); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", ref, err)
	}
	_ = os.Remove(s.imageDir(image)) // only if now empty
	return nil
}

// Leftovers implements sandbox.ImageStore: it removes build areas whose
// lock nobody holds (the building process died) and deleted snapshots
// whose removal was interrupted.
func (s *treeStore) Leftovers(ctx context.Context) error {
	ents, err := os.ReadDir(filepath.Join(s.root, "builds"))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		id := strings.TrimSuffix(e.Name(), ".lock")
		if !storekit.ValidID(id) || (e.IsDir() != (id == e.Name())) {
			continue
		}
		if _, ok := s.builds.Get(id); ok {
			continue // ours and open
		}
		if !e.IsDir() {
			// A lock without a build: a Begin died before mkdir, or is just
			// about to mkdir (then it holds the lock and TryLock fails).
			if _, err := os.Lstat(s.buildDir(id)); err == nil {
				continue // handled with the directory
			}
			if _, err := os.Lstat(s.lockPath(id)); errors.Is(err, fs.ErrNotExist) {
				continue // went with its directory
			}
		}
		lock, err := flock.TryLock(s.lockPath(id), 0o600)
		if errors.Is(err, flock.ErrHeld) {
			continue // live build
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if e.IsDir() {
			slog.Info("removing abandoned build", "kind", s.Kind(), "build", id)
		}
		if err := s.removeBuild(ctx, id, lock); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleted snapshots whose removal failed. Only under s.snaps, so a
	// DeleteSnapshot of this process is not removing the same tree.
	s.snaps.Lock()
	defer s.snaps.Unlock()
	trash, err := filepath.Glob(filepath.Join(s.root, "images", "*", trashPrefix+"*"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, p := range trash {
		if err := s.ops.removeTree(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func syncfs(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// Abandon gives up this process's hold on build b without removing it, as
// the death of the process would (storagetest.Abandoner).
func (s *treeStore) Abandon(b sandbox.Build) error { return s.builds.Abandon(b.ID) }

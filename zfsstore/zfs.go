//go:build linux || freebsd

// Package zfsstore is kiln's ZFS storage backend (sandbox.Backend) through
// go-zfs: each image version is a dataset, each run's clone a ZFS clone,
// on Linux and FreeBSD alike.
package zfsstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	zfs "github.com/mistifyio/go-zfs/v3"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/flock"
	"github.com/kiln-build/kiln/internal/storekit"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// ZFS keeps images and clones as ZFS datasets under one parent dataset,
// through go-zfs (which runs the zfs(8) tool).
//
// Layout under parent (mountpoints inherited below the parent's, so every
// Root is a real path):
//
//	parent/images/<name>             one dataset per image, a container
//	parent/images/<name>/<version>   one dataset per version, readonly=on,
//	                                 with the snapshot @<version> clones come from
//	parent/builds/<id>               build areas (writable filesystems)
//	parent/runs/<runID>              per-run clones, with the user properties
//	                                 kiln:run=<runID> and kiln:snapshot=<ref>
//	parent/runs/<runID>/scratch      a disk-limited clone's Clone.Scratch, mounted
//	                                 at <parent's mountpoint>/.scratch/<runID>
//	<parent's mountpoint>/.build-locks/<id>.lock   flock of the building process
//
// Why a dataset per version rather than all versions as snapshots of one
// dataset: versions form a tree (a version may be built on any older one,
// or from scratch), while a dataset's snapshots are one line; fitting a
// tree into a line needs a data copy (rsync, send/receive) or a chain of
// promotions that breaks when history branches. With a dataset per version,
// Begin on a parent is `zfs clone` of parent's snapshot (no copy), Commit
// is `zfs snapshot` + `zfs rename` (atomic; the rename fails if the version
// exists, so the first Commit wins), and ZFS itself tracks what depends on
// what. The cost: a version built on another keeps that one's blocks, and
// DeleteSnapshot refuses (errdefs.ErrBusy) to delete a version that a later version
// was built on, until that one is deleted.
//
// Safe for concurrent use; see sandbox.Storage and sandbox.ImageStore.
type ZFS struct {
	parent   string
	lockDir  string
	scratch  string // where scratch datasets are mounted
	builds   storekit.Builds
	runs     storekit.Keyed
	snaps    sync.RWMutex // Clone (read) against DeleteSnapshot (write)
	busyWait time.Duration
}

// New opens ZFS storage under the existing dataset parent (e.g.
// "zroot/kiln"), creating parent/images, parent/builds and parent/runs if
// needed. parent must have a mountpoint (not legacy or none). ctx bounds
// the zfs commands it runs.
func New(ctx context.Context, parent string) (*ZFS, error) {
	if parent == "" || strings.HasPrefix(parent, "/") || strings.HasSuffix(parent, "/") || strings.ContainsAny(parent, "@# ") {
		return nil, fmt.Errorf("zfs parent dataset %q: %w", parent, errdefs.ErrInvalid)
	}
	ds, err := zcall(ctx, func() (*zfs.Dataset, error) { return zfs.GetDataset(parent) })
	if err != nil {
		return nil, fmt.Errorf("zfs storage: parent dataset %s: %w", parent, zfsErr(err))
	}
	if !filepath.IsAbs(ds.Mountpoint) {
		return nil, fmt.Errorf("zfs storage: parent dataset %s has mountpoint %q; kiln needs a directory", parent, ds.Mountpoint)
	}
	z := &ZFS{
		parent:   parent,
		lockDir:  filepath.Join(ds.Mountpoint, ".build-locks"),
		scratch:  filepath.Join(ds.Mountpoint, ".scratch"),
		busyWait: 30 * time.Second,
	}
	for _, child := range []string{"images", "builds", "runs"} {
		if err := z.ensureFS(ctx, parent+"/"+child); err != nil {
			return nil, fmt.Errorf("zfs storage: %w", err)
		}
	}
	if err := os.MkdirAll(z.lockDir, 0o700); err != nil {
		return nil, fmt.Errorf("zfs storage: %w", err)
	}
	return z, nil
}

// Kind implements sandbox.Storage.
func (z *ZFS) Kind() string { return "zfs" }

// zcall runs a go-zfs call so that ctx can end the wait for it. go-zfs
// takes no context and starts zfs(8) itself, so this cannot kill a hung
// zfs process: on cancel it only stops waiting, returns ctx.Err(), and the
// goroutine finishes (and its result is dropped) whenever zfs does.
func zcall[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1) // buffered: the goroutine never blocks after we stop waiting
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// zdo is zcall for calls without a result.
func zdo(ctx context.Context, f func() error) error {
	_, err := zcall(ctx, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

// zfsErr maps zfs(8)'s complaints to the sentinel errors.
func zfsErr(err error) error {
	var ze *zfs.Error
	if !errors.As(err, &ze) {
		return err
	}
	msg := strings.TrimSpace(ze.Stderr)
	switch {
	case strings.Contains(msg, "does not exist"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrNotFound)
	case strings.Contains(msg, "already exists"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrExists)
	case strings.Contains(msg, "is busy"), strings.Contains(msg, "dependent clones"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrBusy)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

func (z *ZFS) imageDS(image string) string      { return z.parent + "/images/" + image }
func (z *ZFS) versionDS(image, v string) string { return z.parent + "/images/" + image + "/" + v }
func (z *ZFS) buildDS(id string) string         { return z.parent + "/builds/" + id }
func (z *ZFS) runDS(runID string) string        { return z.parent + "/runs/" + runID }
func (z *ZFS) scratchDS(runID string) string    { return z.runDS(runID) + "/scratch" }
func (z *ZFS) lockPath(id string) string        { return filepath.Join(z.lockDir, id+".lock") }

func (z *ZFS) ensureFS(ctx context.Context, name string) error {
	_, err := zcall(ctx, func() (*zfs.Dataset, error) { return zfs.CreateFilesystem(name, nil) })
	if err = zfsErr(err); err != nil && !errors.Is(err, errdefs.ErrExists) {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}

func (z *ZFS) get(ctx context.Context, name string) (*zfs.Dataset, error) {
	ds, err := zcall(ctx, func() (*zfs.Dataset, error) { return zfs.GetDataset(name) })
	return ds, zfsErr(err)
}

func (z *ZFS) prop(ctx context.Context, ds *zfs.Dataset, key string) (string, error) {
	v, err := zcall(ctx, func() (string, error) { return ds.GetProperty(key) })
	if err != nil {
		return "", zfsErr(err)
	}
	if v == "-" { // unset user property
		v = ""
	}
	return v, nil
}

// children lists the datasets directly below name (errdefs.ErrNotFound if name
// does not exist).
func (z *ZFS) children(ctx context.Context, name string) ([]*zfs.Dataset, error) {
	ds, err := z.get(ctx, name)
	if err != nil {
		return nil, err
	}
	kids, err := zcall(ctx, func() ([]*zfs.Dataset, error) { return ds.Children(1) })
	if err != nil {
		return nil, zfsErr(err)
	}
	var out []*zfs.Dataset
	for _, k := range kids {
		if k.Type == zfs.DatasetFilesystem && path.Dir(k.Name) == name {
			out = append(out, k)
		}
	}
	return out, nil
}

// destroy destroys name and its snapshots, retrying while zfs says the
// dataset is busy: that is seen for about a second after a container or
// jail using it exits. A missing dataset is fine.
func (z *ZFS) destroy(ctx context.Context, name string) error {
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(z.busyWait)
	for attempt := 1; ; attempt++ {
		ds, err := z.get(ctx, name)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		err = zfsErr(zdo(ctx, func() error { return ds.Destroy(zfs.DestroyRecursive) }))
		if err == nil || errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if !errors.Is(err, errdefs.ErrBusy) || strings.Contains(err.Error(), "dependent clones") {
			return fmt.Errorf("destroy %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("destroy %s: gave up after %d attempts: %w", name, attempt, err)
		}
		slog.Debug("zfs dataset busy, retrying destroy", "dataset", name, "attempt", attempt)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// retryBusy runs f until it stops failing with errdefs.ErrBusy (zfs-fuse answers
// busy for a moment after a dataset was used, like destroy) or gives up.
func (z *ZFS) retryBusy(ctx context.Context, what string, f func() error) error {
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(z.busyWait)
	for {
		err := zfsErr(zdo(ctx, f))
		if !errors.Is(err, errdefs.ErrBusy) || strings.Contains(err.Error(), "dependent clones") {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: gave up: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// Clone implements sandbox.Storage.
func (z *ZFS) Clone(ctx context.Context, snapshot, runID string) (sandbox.Clone, error) {
	return z.clone(ctx, snapshot, runID, 0)
}

// CloneLimited implements sandbox.DiskLimiter with the clone's quota, which
// counts what the run wrote (not what the clone shares with its snapshot)
// and its descendants: the clone's scratch dataset, a child mounted outside
// the clone (Clone.Scratch). Past it writes fail with EDQUOT, which the job
// sees as "Disk quota exceeded".
func (z *ZFS) CloneLimited(ctx context.Context, snapshot, runID string, limit int64) (sandbox.Clone, error) {
	if limit <= 0 {
		return sandbox.Clone{}, fmt.Errorf("disk limit %d: %w", limit, errdefs.ErrInvalid)
	}
	return z.clone(ctx, snapshot, runID, limit)
}

func (z *ZFS) clone(ctx context.Context, snapshot, runID string, limit int64) (sandbox.Clone, error) {
	image, version, ok := storekit.ValidRef(snapshot)
	if !ok {
		return sandbox.Clone{}, fmt.Errorf("snapshot %q: %w: want image@version with valid names", snapshot, errdefs.ErrInvalid)
	}
	if err := storekit.CheckName("run id", runID); err != nil {
		return sandbox.Clone{}, err
	}
	defer z.runs.Lock(runID)()
	z.snaps.RLock()
	defer z.snaps.RUnlock()

	if ds, err := z.get(ctx, z.runDS(runID)); err == nil {
		return z.ownClone(ctx, ds, runID, snapshot, limit)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return sandbox.Clone{}, err
	}
	snap, err := z.get(ctx, z.versionDS(image, version)+"@"+version)
	if errors.Is(err, errdefs.ErrNotFound) {
		return sandbox.Clone{}, fmt.Errorf("snapshot %s: %w", snapshot, errdefs.ErrNotFound)
	}
	if err != nil {
		return sandbox.Clone{}, err
	}
	// setuid and devices off: what a job leaves in its clone is never a
	// setuid binary or a device to the host (hooks, tools walking it).
	props := map[string]string{
		"sync":          "disabled", // a run's clone is thrown away; crash safety buys nothing
		"atime":         "off",
		"setuid":        "off",
		"devices":       "off",
		"kiln:run":      runID,
		"kiln:snapshot": snapshot,
	}
	if limit > 0 {
		props["quota"] = strconv.FormatInt(limit, 10)
	}
	ds, err := zcall(ctx, func() (*zfs.Dataset, error) { return snap.Clone(z.runDS(runID), props) })
	if err != nil {
		return sandbox.Clone{}, fmt.Errorf("clone %s for run %s: %w", snapshot, runID, zfsErr(err))
	}
	c := sandbox.Clone{RunID: runID, Snapshot: snapshot, Root: ds.Mountpoint}
	if limit > 0 {
		if c.Scratch, err = z.makeScratch(ctx, runID); err != nil {
			return sandbox.Clone{}, errors.Join(err, z.destroy(context.WithoutCancel(ctx), ds.Name))
		}
	}
	return c, nil
}

// makeScratch gives the limited clone of runID its scratch dataset, if it
// has none yet, and returns where it is mounted. As a child of the clone
// it counts against the clone's quota and inherits setuid=off and
// devices=off; it is mounted in a host directory, not inside the clone,
// so nothing on the host's path to it is the job's to replace.
func (z *ZFS) makeScratch(ctx context.Context, runID string) (string, error) {
	name := z.scratchDS(runID)
	ds, err := z.get(ctx, name)
	if errors.Is(err, errdefs.ErrNotFound) {
		dir := filepath.Join(z.scratch, runID)
		ds, err = zcall(ctx, func() (*zfs.Dataset, error) {
			return zfs.CreateFilesystem(name, map[string]string{"mountpoint": dir})
		})
		err = zfsErr(err)
	}
	if err != nil {
		return "", fmt.Errorf("scratch dataset of run %s: %w", runID, err)
	}
	return ds.Mountpoint, nil
}

// ownClone returns the existing clone ds of runID if it is kiln's and of
// snapshot, with its scratch dataset if it has one (a reattach asks with
// limit 0) or limit > 0 (then made if a Clone was cut short before it).
func (z *ZFS) ownClone(ctx context.Context, ds *zfs.Dataset, runID, snapshot string, limit int64) (sandbox.Clone, error) {
	run, err := z.prop(ctx, ds, "kiln:run")
	if err != nil {
		return sandbox.Clone{}, err
	}
	if run != runID {
		return sandbox.Clone{}, fmt.Errorf("dataset %s exists and is not kiln's clone of run %s: %w", ds.Name, runID, errdefs.ErrExists)
	}
	rec, err := z.prop(ctx, ds, "kiln:snapshot")
	if err != nil {
		return sandbox.Clone{}, err
	}
	if rec != snapshot {
		return sandbox.Clone{}, fmt.Errorf("run %s already has a clone of %s: %w", runID, rec, errdefs.ErrExists)
	}
	c := sandbox.Clone{RunID: runID, Snapshot: snapshot, Root: ds.Mountpoint}
	if limit > 0 {
		if c.Scratch, err = z.makeScratch(ctx, runID); err != nil {
			return sandbox.Clone{}, err
		}
	} else if sc, err := z.get(ctx, z.scratchDS(runID)); err == nil {
		c.Scratch = sc.Mountpoint
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return sandbox.Clone{}, err
	}
	return c, nil
}

// Destroy implements sandbox.Storage. A dataset under parent/runs that does not
// carry kiln:run=<runID> is left alone.
func (z *ZFS) Destroy(ctx context.Context, runID string) error {
	if err := storekit.CheckName("run id", runID); err != nil {
		return err
	}
	defer z.runs.Lock(runID)()
	ds, err := z.get(ctx, z.runDS(runID))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if run, err := z.prop(ctx, ds, "kiln:run"); err != nil {
		return err
	} else if run != runID {
		return fmt.Errorf("destroy %s: %w: not kiln's clone of run %s", ds.Name, errdefs.ErrInvalid, runID)
	}
	if err := z.destroy(ctx, ds.Name); err != nil {
		return err
	}
	// The scratch dataset went with its clone; its mountpoint stays.
	if err := os.Remove(filepath.Join(z.scratch, runID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("destroy clone of %s: %w", runID, err)
	}
	return nil
}

// List implements Storage: the datasets directly under parent/runs whose
// kiln:run property names them.
func (z *ZFS) List(ctx context.Context) ([]sandbox.Clone, error) {
	kids, err := z.children(ctx, z.parent+"/runs")
	if err != nil {
		return nil, err
	}
	var out []sandbox.Clone
	for _, k := range kids {
		runID := path.Base(k.Name)
		run, err := z.prop(ctx, k, "kiln:run")
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // destroyed meanwhile
		}
		if err != nil {
			return nil, err
		}
		if run != runID {
			continue
		}
		snap, err := z.prop(ctx, k, "kiln:snapshot")
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return nil, err
		}
		out = append(out, sandbox.Clone{RunID: runID, Snapshot: snap, Root: k.Mountpoint})
	}
	return out, nil
}

// Begin implements sandbox.ImageStore.
func (z *ZFS) Begin(ctx context.Context, image, parent string) (sandbox.Build, error) {
	if err := storekit.CheckName("image", image); err != nil {
		return sandbox.Build{}, err
	}
	var from *zfs.Dataset
	if parent != "" {
		if err := storekit.CheckName("version", parent); err != nil {
			return sandbox.Build{}, err
		}
		z.snaps.RLock()
		defer z.snaps.RUnlock()
		var err error
		from, err = z.get(ctx, z.versionDS(image, parent)+"@"+parent)
		if errors.Is(err, errdefs.ErrNotFound) {
			return sandbox.Build{}, fmt.Errorf("parent %s@%s: %w", image, parent, errdefs.ErrNotFound)
		}
		if err != nil {
			return sandbox.Build{}, err
		}
	}
	id := storekit.NewID()
	// Locked before the dataset exists, so Leftovers never takes a build
	// being set up for a dead one.
	lock, err := flock.TryLock(z.lockPath(id), 0o600)
	if err != nil {
		return sandbox.Build{}, fmt.Errorf("begin build of %s: %w", image, err)
	}
	var ds *zfs.Dataset
	if from == nil {
		ds, err = zcall(ctx, func() (*zfs.Dataset, error) { return zfs.CreateFilesystem(z.buildDS(id), nil) })
	} else {
		ds, err = zcall(ctx, func() (*zfs.Dataset, error) { return from.Clone(z.buildDS(id), nil) })
	}
	if err != nil {
		_ = z.destroy(context.WithoutCancel(ctx), z.buildDS(id))
		_ = lock.Remove()
		return sandbox.Build{}, fmt.Errorf("begin build of %s: %w", image, zfsErr(err))
	}
	z.builds.Add(id, lock)
	return sandbox.Build{Image: image, ID: id, Root: ds.Mountpoint}, nil
}

// Commit implements ImageStore: snapshot the build, then rename it to its
// version. The build is unmounted for the rename (zfs-fuse cannot rename
// a mounted dataset; real ZFS would remount it, which nothing needs).
func (z *ZFS) Commit(ctx context.Context, b sandbox.Build, version string) (sandbox.SnapshotInfo, error) {
	if err := storekit.CheckBuild(b.Image, b.ID); err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	if err := storekit.CheckName("version", version); err != nil {
		return sandbox.SnapshotInfo{}, err
	}
	if _, ok := z.builds.Get(b.ID); !ok {
		return sandbox.SnapshotInfo{}, fmt.Errorf("build %s of %s is not open here: %w", b.ID, b.Image, errdefs.ErrNotFound)
	}
	fail := func(err error) (sandbox.SnapshotInfo, error) {
		return sandbox.SnapshotInfo{}, fmt.Errorf("commit %s@%s: %w", b.Image, version, err)
	}
	ds, err := z.get(ctx, z.buildDS(b.ID))
	if err != nil {
		return fail(err)
	}
	if _, err := z.get(ctx, z.versionDS(b.Image, version)); err == nil {
		return fail(errdefs.ErrExists)
	}
	z.snaps.Lock()
	defer z.snaps.Unlock()
	if err := z.ensureFS(ctx, z.imageDS(b.Image)); err != nil {
		return fail(err)
	}
	created := time.Now().UTC()
	if err := zfsErr(zdo(ctx, func() error { return ds.SetProperty("kiln:created", created.Format(time.RFC3339Nano)) })); err != nil {
		return fail(err)
	}
	snap, err := zcall(ctx, func() (*zfs.Dataset, error) { return ds.Snapshot(version, false) })
	if err != nil {
		return fail(zfsErr(err))
	}
	undo := func() {
		ctx := context.WithoutCancel(ctx)
		_ = z.retryBusy(ctx, "destroy "+snap.Name, func() error { return snap.Destroy(zfs.DestroyDefault) })
		_ = zdo(ctx, func() error { _, err := ds.Mount(false, nil); return err })
	}
	if err := z.retryBusy(ctx, "unmount "+ds.Name, func() error { _, err := ds.Unmount(false); return err }); err != nil {
		undo()
		return fail(err)
	}
	dst := z.versionDS(b.Image, version)
	// rename fails if dst exists: two commits of one version, one wins.
	err = z.retryBusy(ctx, "rename "+ds.Name, func() error { _, err := ds.Rename(dst, false, false); return err })
	if err != nil {
		undo()
		return fail(err)
	}
	committed := &zfs.Dataset{Name: dst}
	if err := zfsErr(zdo(ctx, func() error { return committed.SetProperty("readonly", "on") })); err != nil {
		slog.Warn("set readonly on committed image", "dataset", dst, "err", err)
	}
	if lock, ok := z.builds.Take(b.ID); ok {
		if err := lock.Remove(); err != nil {
			slog.Warn("release build lock", "build", b.ID, "err", err)
		}
	}
	var size int64
	if d, err := z.get(ctx, dst); err == nil {
		size = int64(min(d.Referenced, math.MaxInt64))
	}
	return sandbox.SnapshotInfo{Image: b.Image, Version: version, Size: size, Created: created}, nil
}

// Abort implements sandbox.ImageStore. A build of another process is only removed
// if that process is gone.
func (z *ZFS) Abort(ctx context.Context, b sandbox.Build) error {
	if err := storekit.CheckBuild(b.Image, b.ID); err != nil {
		return err
	}
	lock, ok := z.builds.Take(b.ID)
	if !ok {
		if _, err := z.get(ctx, z.buildDS(b.ID)); errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		var err error
		if lock, err = flock.TryLock(z.lockPath(b.ID), 0o600); errors.Is(err, flock.ErrHeld) {
			return fmt.Errorf("abort build %s: %w: another process is building it", b.ID, errdefs.ErrBusy)
		} else if err != nil {
			return fmt.Errorf("abort build %s: %w", b.ID, err)
		}
	}
	return z.removeBuild(ctx, b.ID, lock)
}

func (z *ZFS) removeBuild(ctx context.Context, id string, lock *flock.Lock) error {
	if err := z.destroy(ctx, z.buildDS(id)); err != nil {
		// Keep the lock file so a later Leftovers retries.
		return errors.Join(fmt.Errorf("remove build %s: %w", id, err), lock.Close())
	}
	return lock.Remove()
}

// Abandon gives up this process's hold on build b without removing it, as
// the death of the process would (storagetest.Abandoner).
func (z *ZFS) Abandon(b sandbox.Build) error { return z.builds.Abandon(b.ID) }

// Images implements sandbox.ImageStore.
func (z *ZFS) Images(ctx context.Context) ([]string, error) {
	imgs, err := z.children(ctx, z.parent+"/images")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, img := range imgs {
		name := path.Base(img.Name)
		if !names.Valid(name) {
			continue
		}
		vs, err := z.children(ctx, img.Name)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(vs) > 0 {
			out = append(out, name)
		}
	}
	return out, nil
}

// Snapshots implements sandbox.ImageStore. Size is the version's referenced bytes.
func (z *ZFS) Snapshots(ctx context.Context, image string) ([]sandbox.SnapshotInfo, error) {
	if err := storekit.CheckName("image", image); err != nil {
		return nil, err
	}
	vs, err := z.children(ctx, z.imageDS(image))
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	var out []sandbox.SnapshotInfo
	for _, v := range vs {
		version := path.Base(v.Name)
		if !names.Valid(version) {
			continue
		}
		c, err := z.prop(ctx, v, "kiln:created")
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		created, _ := time.Parse(time.RFC3339Nano, c) // zero if unset: sorts first
		out = append(out, sandbox.SnapshotInfo{Image: image, Version: version, Size: int64(min(v.Referenced, math.MaxInt64)), Created: created})
	}
	return storekit.OldestFirst(image, out)
}

// DeleteSnapshot implements sandbox.ImageStore. errdefs.ErrBusy while a run's clone, a
// build or a later version was made from it.
func (z *ZFS) DeleteSnapshot(ctx context.Context, image, version string) error {
	if err := storekit.CheckName("image", image); err != nil {
		return err
	}
	if err := storekit.CheckName("version", version); err != nil {
		return err
	}
	z.snaps.Lock()
	defer z.snaps.Unlock()
	ref := image + "@" + version
	clones, err := z.List(ctx)
	if err != nil {
		return err
	}
	if err := storekit.NoCloneOf(ref, clones); err != nil {
		return err
	}
	if err := z.destroy(ctx, z.versionDS(image, version)); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", ref, err)
	}
	if vs, err := z.children(ctx, z.imageDS(image)); err == nil && len(vs) == 0 {
		if err := z.destroy(ctx, z.imageDS(image)); err != nil {
			slog.Warn("remove empty image dataset", "image", image, "err", err)
		}
	}
	return nil
}

// Leftovers implements ImageStore: it destroys build datasets whose lock
// nobody holds (the building process died) and stale lock files.
func (z *ZFS) Leftovers(ctx context.Context) error {
	kids, err := z.children(ctx, z.parent+"/builds")
	if err != nil {
		return err
	}
	var errs []error
	live := map[string]bool{}
	for _, k := range kids {
		id := path.Base(k.Name)
		if !storekit.ValidID(id) {
			continue
		}
		live[id] = true
		if _, ok := z.builds.Get(id); ok {
			continue
		}
		lock, err := flock.TryLock(z.lockPath(id), 0o600)
		if errors.Is(err, flock.ErrHeld) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		slog.Info("removing abandoned build", "kind", "zfs", "build", id)
		if err := z.removeBuild(ctx, id, lock); err != nil {
			errs = append(errs, err)
		}
	}
	locks, err := filepath.Glob(filepath.Join(z.lockDir, "*.lock"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, p := range locks {
		id := strings.TrimSuffix(filepath.Base(p), ".lock")
		if live[id] {
			continue
		}
		// A Begin that died before creating its dataset, or one about to
		// create it (then it holds the lock and TryLock fails).
		lock, err := flock.TryLock(p, 0o600)
		if err != nil {
			continue
		}
		if _, err := z.get(ctx, z.buildDS(id)); errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, lock.Remove())
		} else {
			lock.Close()
		}
	}
	return errors.Join(errs...)
}

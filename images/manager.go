// Package images manages a host's base images the way poudriere manages
// its jails: a named image is made once by a method (debootstrap, busybox,
// tar=, dir=, freebsd), updated into new read-only snapshots, listed,
// pruned and deleted. Trees live in the host's sandbox.ImageStore; the
// metadata (arch, os, method, packages, parent...) lives beside it in
// <metaDir>/<name>/<version>.json.
package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// Options configure a Manager; the zero value is usable.
type Options struct {
	// Mirror for debootstrap; "" lets debootstrap use its own default.
	Mirror string
	// FreeBSDDist is a URL or a local directory holding <release>/base.txz.
	FreeBSDDist string
	// CacheDir keeps downloads (foreign busybox, dist sets). Default:
	// <metaDir>/../cache.
	CacheDir string
	// LogDir keeps the full output of a failed build. Default:
	// <metaDir>/../logs.
	LogDir string
	// Logger for what the manager does on its own (cleanups). Default: slog.Default().
	Logger *slog.Logger
}

// Manager creates, updates, lists and deletes images on one host.
//
// Safe for concurrent use, also by several processes on one host: every
// operation that changes an image holds that image's lock (a flock in
// metaDir), which a second changer fails to get at once rather than waiting
// (errdefs.ErrBusy, naming the holder's pid). Reads (List, Snapshots,
// Resolve) take no lock: they see committed snapshots only, never a build.
// ctx cancels the external tools a build runs; a cancelled build is
// aborted and leaves nothing listed.
type Manager struct {
	b       sandbox.Backend
	metaDir string
	opts    Options
	log     *slog.Logger
}

// NewManager returns a Manager of the images in b, with metadata in metaDir.
func NewManager(b sandbox.Backend, metaDir string, opts Options) *Manager {
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(filepath.Dir(metaDir), "cache")
	}
	if opts.LogDir == "" {
		opts.LogDir = filepath.Join(filepath.Dir(metaDir), "logs")
	}
	l := opts.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Manager{b: b, metaDir: metaDir, opts: opts, log: l}
}

// CreateOptions describe a new image.
type CreateOptions struct {
	Name string
	// Method is "busybox", "debootstrap", "tar=PATH", "dir=PATH" or "freebsd".
	Method string
	// Version is the method's version: the Debian suite (default
	// bookworm), the FreeBSD release (14.2-RELEASE).
	Version string
	// Arch of the image (any spelling qemu.Normalize knows); default: the
	// host's, or for tar=/dir= what the tree's binaries are built for.
	Arch string
	// Packages: extra packages for debootstrap; extra dist sets (lib32)
	// for freebsd.
	Packages []string
	// Progress receives human progress lines (stages, counts, bytes).
	Progress io.Writer
	// Quiet drops progress; failures still keep their log file.
	Quiet bool
	// Meter, when set, shows the byte progress of the build's long
	// transfers (a tarball's extraction, a dist set's download): for a
	// progress bar on a terminal.
	Meter Meter
}

// Meter starts showing the progress of a transfer of total bytes (-1:
// unknown) described by desc; the build calls set with the bytes done so
// far (from one goroutine) and end once, when the transfer is over.
type Meter func(desc string, total int64) (set func(done int64), end func())

// start is m's transfer, or one that shows nothing when m is nil.
func (m Meter) start(desc string, total int64) (set func(int64), end func()) {
	if m == nil {
		return func(int64) {}, func() {}
	}
	return m(desc, total)
}

// StepError is a build failure: which step failed, and the log file that
// keeps the full output of the tools it ran.
type StepError struct {
	Step string
	Log  string // "" when there was no tool output to keep
	Err  error
}

func (e *StepError) Error() string {
	if e.Log == "" {
		return fmt.Sprintf("%s failed: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("%s failed: %v (full output in %s)", e.Step, e.Err, e.Log)
}

func (e *StepError) Unwrap() error { return e.Err }

// Create builds a new image and commits its first snapshot. It fails with
// errdefs.ErrExists if the image has a snapshot already (use Update), and
// with errdefs.ErrBusy if another process is building it right now.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (Snapshot, error) {
	if !names.Valid(o.Name) {
		return Snapshot{}, fmt.Errorf("image name %q: want letters, digits, '.', '_' or '-': %w", o.Name, errdefs.ErrInvalid)
	}
	if IsFleet(o.Name) {
		return Snapshot{}, fmt.Errorf("image name %q: the prefix %q is kept for server-held images a host fetches: %w", o.Name, FleetPrefix, errdefs.ErrInvalid)
	}
	spec, err := parseMethod(o.Method, o.Version, o.Arch, o.Packages)
	if err != nil {
		return Snapshot{}, err
	}
	lk, prevRoot, err := m.lock(o.Name, "create")
	if err != nil {
		return Snapshot{}, err
	}
	defer lk.unlock()
	if _, err := m.b.Snapshots(ctx, o.Name); err == nil {
		return Snapshot{}, fmt.Errorf("image %q exists (use update to make a new snapshot): %w", o.Name, errdefs.ErrExists)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return Snapshot{}, fmt.Errorf("list snapshots of %s: %w", o.Name, err)
	}
	m.cleanup(ctx, prevRoot)
	m.removeStaleMeta(o.Name, nil)
	return m.build(ctx, lk, spec, o.Name, "", "", o.Progress, o.Quiet, o.Meter, nil)
}

// cleanup removes what killed builds left: mounts inside the build area
// the lock file recorded, and then every build area no live process uses.
func (m *Manager) cleanup(ctx context.Context, prevRoot string) {
	if err := unmountUnder(prevRoot); err != nil {
		m.log.Warn("unmount leftovers of a killed build", "root", prevRoot, "err", err)
	}
	if err := m.b.Leftovers(ctx); err != nil {
		m.log.Warn("remove leftover build areas", "err", err)
	}
}

// build makes one snapshot of name with spec: a build area (a copy of
// snapshot from when from != ""), the method (or update) run into it,
// metadata written, then Commit. parent is recorded as the new snapshot's
// parent. Anything failing before Commit aborts the build area.
func (m *Manager) build(ctx context.Context, lk *nameLock, spec methodSpec, name, from, parent string, progress io.Writer, quiet bool, meter Meter, update func(context.Context, *buildEnv) error) (snap Snapshot, err error) {
	if quiet || progress == nil {
		progress = io.Discard
	}
	env, err := m.newBuildEnv(name, progress)
	if err == nil && !quiet {
		env.meter = meter
	}
	if err != nil {
		return Snapshot{}, err
	}
	defer func() { env.finish(err) }()

	b, err := m.b.Begin(ctx, name, from)
	if err != nil {
		return Snapshot{}, env.fail("prepare build area", err)
	}
	env.root = b.Root
	if err := lk.record(b.Root); err != nil {
		_ = m.b.Abort(context.WithoutCancel(ctx), b)
		return Snapshot{}, err
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		actx := context.WithoutCancel(ctx)
		if uerr := unmountUnder(b.Root); uerr != nil {
			m.log.Warn("unmount inside failed build", "root", b.Root, "err", uerr)
		}
		if aerr := m.b.Abort(actx, b); aerr != nil {
			m.log.Warn("abort build", "image", name, "err", aerr)
		}
	}()

	if update != nil {
		err = update(ctx, env)
	} else {
		err = spec.build(ctx, m, env)
	}
	if err != nil {
		return Snapshot{}, err
	}
	if err := ctx.Err(); err != nil {
		return Snapshot{}, err
	}
	if spec.Arch == "" || spec.OS == "" {
		arch, osName, derr := detectArch(b.Root)
		switch {
		case spec.Arch == "" && derr != nil:
			return Snapshot{}, env.fail("detect the image's architecture", fmt.Errorf("%w (pass -a ARCH)", derr))
		case spec.Arch == "":
			spec.Arch = arch
		}
		spec.OS = osName
		if derr != nil {
			spec.OS = runtime.GOOS
		}
	}
	newest := ""
	if snaps, serr := m.b.Snapshots(ctx, name); serr == nil && len(snaps) > 0 {
		newest = snaps[len(snaps)-1].Version
	}
	now := time.Now()
	snap = Snapshot{
		Name: name, Version: nextVersion(now, newest),
		Arch: spec.Arch, OS: spec.OS, Method: spec.Method, Source: spec.Source,
		MethodVersion: spec.Version, Packages: spec.Packages,
		Created: now.UTC(), Size: treeSize(b.Root), Parent: parent,
	}
	fmt.Fprintf(env.progress, "committing %s (%s)\n", snap.Ref(), humanBytes(snap.Size))
	// Metadata first: a snapshot never appears without it. A kill between
	// the two leaves a metadata file without a snapshot, which listing
	// ignores and the next create or prune removes.
	if err := m.writeMeta(snap); err != nil {
		return Snapshot{}, env.fail("write metadata", err)
	}
	if _, err := m.b.Commit(ctx, b, snap.Version); err != nil {
		_ = os.Remove(m.metaPath(name, snap.Version))
		return Snapshot{}, env.fail("commit snapshot", err)
	}
	committed = true
	_ = lk.record("")
	return snap, nil
}

// UpdateOptions tune UpdateWith.
type UpdateOptions struct {
	Name string
	// Launcher runs the upgrade sandbox; needed for debootstrap images only.
	Launcher sandbox.Launcher
	// Hold, when set, names the upgrade sandbox from its run ID and holds
	// it against reaping until release (sandbox.Runner.Hold), so that a
	// worker on the same data dir leaves it alone while it runs and reaps
	// it if this process dies.
	Hold     func(runID string) (key string, release func(), err error)
	Progress io.Writer
	Quiet    bool
}

// Update makes a new snapshot of name from its newest one, without progress
// output; see UpdateWith.
func (m *Manager) Update(ctx context.Context, name string, launcher sandbox.Launcher) (Snapshot, error) {
	return m.UpdateWith(ctx, UpdateOptions{Name: name, Launcher: launcher})
}

// UpdateWith makes a new snapshot of o.Name from its newest one, recording
// that one as the parent. For debootstrap images it runs apt-get
// dist-upgrade inside a sandbox with network on a copy of the newest
// snapshot; the other methods rebuild from their source. Runs cloned from
// older snapshots are not affected. Another process changing the image
// makes it fail at once with errdefs.ErrBusy.
func (m *Manager) UpdateWith(ctx context.Context, o UpdateOptions) (Snapshot, error) {
	name, launcher, progress, quiet := o.Name, o.Launcher, o.Progress, o.Quiet
	lk, prevRoot, err := m.lock(name, "update")
	if err != nil {
		return Snapshot{}, err
	}
	defer lk.unlock()
	newest, err := m.Resolve(ctx, name)
	if err != nil {
		return Snapshot{}, err
	}
	m.cleanup(ctx, prevRoot)
	spec, err := specFromSnapshot(newest)
	if err != nil {
		return Snapshot{}, err
	}
	if spec.Method == "debootstrap" {
		if launcher == nil {
			return Snapshot{}, fmt.Errorf("update %s: a debootstrap image is updated in a sandbox, but no launcher was given: %w", name, errdefs.ErrInvalid)
		}
		return m.build(ctx, lk, spec, name, newest.Version, newest.Version, progress, quiet, nil, func(ctx context.Context, env *buildEnv) error {
			return aptUpgrade(ctx, launcher, o.Hold, env, newest)
		})
	}
	return m.build(ctx, lk, spec, name, "", newest.Version, progress, quiet, nil, nil)
}

// List returns every image with its newest snapshot, sorted by name.
func (m *Manager) List(ctx context.Context) ([]Image, error) {
	names, err := m.b.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	slices.Sort(names)
	out := make([]Image, 0, len(names))
	for _, n := range names {
		snaps, err := m.Snapshots(ctx, n)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, Image{Name: n, Newest: snaps[len(snaps)-1], Snapshots: len(snaps)})
	}
	return out, nil
}

// Snapshots returns the committed snapshots of name, oldest first, with
// their metadata. An unknown name wraps errdefs.ErrNotFound.
func (m *Manager) Snapshots(ctx context.Context, name string) ([]Snapshot, error) {
	infos, err := m.b.Snapshots(ctx, name)
	if err != nil {
		return nil, m.notFound(ctx, name, err)
	}
	out := make([]Snapshot, 0, len(infos))
	for _, in := range infos {
		s, ok, err := m.readMeta(in.Image, in.Version)
		if err != nil {
			m.log.Warn("image metadata unreadable", "ref", in.Ref(), "err", err)
		}
		if !ok || err != nil {
			s = Snapshot{Name: in.Image, Version: in.Version, Arch: Unknown, OS: Unknown, Method: Unknown,
				Created: in.Created, Size: in.Size}
		}
		if s.Size == 0 {
			s.Size = in.Size
		}
		out = append(out, s)
	}
	return out, nil
}

// notFound turns the backend's ErrNotFound for name into one that lists the
// images that do exist.
func (m *Manager) notFound(ctx context.Context, name string, err error) error {
	if !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("snapshots of %s: %w", name, err)
	}
	names, lerr := m.b.Images(ctx)
	if lerr != nil || len(names) == 0 {
		return fmt.Errorf("image %q: %w (no images on this host; make one with kiln image create)", name, errdefs.ErrNotFound)
	}
	slices.Sort(names)
	return fmt.Errorf("image %q: %w (images here: %s)", name, errdefs.ErrNotFound, strings.Join(names, ", "))
}

// Resolve turns a reference into a snapshot: "name" is the newest snapshot
// of name, "name@version" that exact one. Unknown names and versions wrap
// errdefs.ErrNotFound and say what exists.
func (m *Manager) Resolve(ctx context.Context, ref string) (Snapshot, error) {
	name, version, pinned := strings.Cut(ref, "@")
	snaps, err := m.Snapshots(ctx, name)
	if err != nil {
		return Snapshot{}, err
	}
	if !pinned {
		return snaps[len(snaps)-1], nil
	}
	vs := make([]string, 0, len(snaps))
	for _, s := range snaps {
		if s.Version == version {
			return s, nil
		}
		vs = append(vs, s.Version)
	}
	return Snapshot{}, fmt.Errorf("snapshot %q: %w (snapshots of %s: %s)", ref, errdefs.ErrNotFound, name, strings.Join(vs, ", "))
}

// clonesOf returns the clones made from any snapshot of name.
func (m *Manager) clonesOf(ctx context.Context, name string) ([]sandbox.Clone, error) {
	all, err := m.b.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list clones: %w", err)
	}
	var out []sandbox.Clone
	for _, c := range all {
		if img, _, _ := strings.Cut(c.Snapshot, "@"); img == name {
			out = append(out, c)
		}
	}
	return out, nil
}

// lockInUse takes name's lock for op and returns its snapshots and the
// clones made from them; on error nothing is held.
func (m *Manager) lockInUse(ctx context.Context, name, op string) (*nameLock, []sandbox.SnapshotInfo, []sandbox.Clone, error) {
	lk, _, err := m.lock(name, op)
	if err != nil {
		return nil, nil, nil, err
	}
	snaps, err := m.b.Snapshots(ctx, name)
	if err != nil {
		lk.unlock()
		return nil, nil, nil, m.notFound(ctx, name, err)
	}
	clones, err := m.clonesOf(ctx, name)
	if err != nil {
		lk.unlock()
		return nil, nil, nil, err
	}
	return lk, snaps, clones, nil
}

// Delete removes every snapshot of name and its metadata. While clones of
// any of its snapshots exist it refuses with errdefs.ErrBusy, naming their
// runs; with force it destroys those clones first (their runs fail).
func (m *Manager) Delete(ctx context.Context, name string, force bool) error {
	lk, snaps, clones, err := m.lockInUse(ctx, name, "delete")
	if err != nil {
		return err
	}
	defer lk.unlock()
	if len(clones) > 0 && !force {
		runs := make([]string, len(clones))
		for i, c := range clones {
			runs[i] = c.RunID + " (" + c.Snapshot + ")"
		}
		return fmt.Errorf("image %q is in use by runs %s (use --force to destroy their clones): %w", name, strings.Join(runs, ", "), errdefs.ErrBusy)
	}
	for _, c := range clones {
		if err := m.b.Destroy(ctx, c.RunID); err != nil {
			return fmt.Errorf("destroy clone of run %s: %w", c.RunID, err)
		}
	}
	// Newest first: on ZFS a later snapshot's dataset may be a clone of an
	// earlier one.
	for i := len(snaps) - 1; i >= 0; i-- {
		if err := m.b.DeleteSnapshot(ctx, name, snaps[i].Version); err != nil {
			return fmt.Errorf("delete %s: %w", snaps[i].Ref(), err)
		}
		_ = os.Remove(m.metaPath(name, snaps[i].Version))
	}
	m.removeStaleMeta(name, nil)
	_ = os.Remove(filepath.Join(m.metaDir, name))
	return nil
}

// Prune deletes the snapshots of name except the newest keep and those a
// clone still uses. A snapshot the backend reports busy (another depends
// on it) is kept too. keep < 1 is ErrInvalid.
func (m *Manager) Prune(ctx context.Context, name string, keep int) error {
	if keep < 1 {
		return fmt.Errorf("keep %d: at least the newest snapshot stays: %w", keep, errdefs.ErrInvalid)
	}
	lk, snaps, clones, err := m.lockInUse(ctx, name, "prune")
	if err != nil {
		return err
	}
	defer lk.unlock()
	used := map[string]bool{}
	for _, c := range clones {
		used[c.Snapshot] = true
	}
	var kept []string
	for i, s := range snaps {
		if i >= len(snaps)-keep || used[s.Ref()] {
			kept = append(kept, s.Version)
			continue
		}
		err := m.b.DeleteSnapshot(ctx, name, s.Version)
		if errors.Is(err, errdefs.ErrBusy) {
			m.log.Info("snapshot busy, kept", "ref", s.Ref(), "err", err)
			kept = append(kept, s.Version)
			continue
		}
		if err != nil {
			return fmt.Errorf("delete %s: %w", s.Ref(), err)
		}
	}
	m.removeStaleMeta(name, kept)
	return nil
}

// humanBytes is n bytes in binary units, as "16 B" or "1.5 KiB".
func humanBytes(n int64) string {
	return humanize.IBytes(uint64(max(n, 0)))
}

package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/names"
)

// A fleet image is a version of an image the server holds for every host
// (docs/images.md). A host keeps each version it fetched as a snapshot of
// the local image FleetImageName(name), version FleetSnapshotVersion(v),
// beside its own images: the "fleet." prefix is refused to `kiln image
// create`, so the two never collide.

// FleetPrefix starts the local name of every fleet image's snapshots.
const FleetPrefix = "fleet."

// FleetVersion is a server-held image version as a host imports it (the
// fields of api.ImageVersion a host needs; images speaks no wire types).
type FleetVersion struct {
	Name      string
	Version   int
	Arch, OS  string
	Method    string
	Recipe    string
	TarDigest string
	TarSize   int64
}

// Ref is NAME@VERSION, as the server names the version.
func (v FleetVersion) Ref() string { return fmt.Sprintf("%s@%d", v.Name, v.Version) }

// Check reports what makes v unusable (errdefs.ErrInvalid).
func (v FleetVersion) Check() error {
	if !names.Valid(v.Name) {
		return fmt.Errorf("fleet image name %.80q: want letters, digits, '.', '_' or '-': %w", v.Name, errdefs.ErrInvalid)
	}
	if v.Version < 1 || v.Version > 999999 {
		return fmt.Errorf("fleet image %s version %d: want 1 to 999999: %w", v.Name, v.Version, errdefs.ErrInvalid)
	}
	return Expect{TarDigest: v.TarDigest, TarSize: v.TarSize}.Check()
}

// FleetImageName is the local image that keeps the snapshots of the fleet
// image name. A name too long for the prefix is cut and given a hash of
// the whole, so that it stays a valid name and distinct.
func FleetImageName(name string) string {
	n := FleetPrefix + name
	if len(n) <= 63 {
		return n
	}
	var h uint32 = 2166136261 // FNV-1a: short, stable, enough to keep names apart
	for i := 0; i < len(name); i++ {
		h = (h ^ uint32(name[i])) * 16777619
	}
	return fmt.Sprintf("%s%s-%08x", FleetPrefix, name[:63-len(FleetPrefix)-9], h)
}

// FleetSnapshotVersion is the local snapshot version of v: the server's
// version, zero-padded so that versions sort, and the start of the tar
// digest, so that a server that reused a number never gets another tree.
func FleetSnapshotVersion(v FleetVersion) string {
	return fmt.Sprintf("v%06d-%s", v.Version, strings.TrimPrefix(v.TarDigest, "sha256:")[:16])
}

// IsFleet reports whether a local image name holds fleet snapshots.
func IsFleet(name string) bool { return strings.HasPrefix(name, FleetPrefix) }

// FindFleet returns the snapshot of v on this host, if it has it.
func (m *Manager) FindFleet(ctx context.Context, v FleetVersion) (Snapshot, bool, error) {
	if err := v.Check(); err != nil {
		return Snapshot{}, false, err
	}
	s, err := m.Resolve(ctx, FleetImageName(v.Name)+"@"+FleetSnapshotVersion(v))
	if errors.Is(err, errdefs.ErrNotFound) {
		return Snapshot{}, false, nil
	}
	if err != nil {
		return Snapshot{}, false, err
	}
	if s.TarDigest != v.TarDigest {
		// Metadata lost or another tree under a colliding prefix: not it.
		return Snapshot{}, false, nil
	}
	return s, true, nil
}

// ImportOptions tune ImportFleet.
type ImportOptions struct {
	// Progress, if set, is called with the file bytes written so far.
	Progress func(written int64)
}

// ImportFleet makes the zstd stream r (the version's blob) the snapshot of
// v, checking it as Unpack does. Nothing is committed unless every byte
// checked out; a refused stream leaves no build area. Importing a version
// the host has already returns that snapshot. It takes no image lock:
// imports of one image may run side by side (the backend's Commit lets
// one win), and runs holding the image (Hold) do not stop it.
func (m *Manager) ImportFleet(ctx context.Context, v FleetVersion, r io.Reader, opts ImportOptions) (snap Snapshot, st UnpackStats, err error) {
	if err := v.Check(); err != nil {
		return Snapshot{}, st, err
	}
	if s, ok, err := m.FindFleet(ctx, v); err != nil || ok {
		return s, st, err
	}
	name, version := FleetImageName(v.Name), FleetSnapshotVersion(v)
	// The image's lock file, without taking the lock: Hold takes it
	// shared only when it exists.
	if err := m.touchLock(name); err != nil {
		return Snapshot{}, st, err
	}
	b, err := m.b.Begin(ctx, name, "")
	if err != nil {
		return Snapshot{}, st, fmt.Errorf("import %s: prepare build area: %w", v.Ref(), err)
	}
	committed := false
	defer func() {
		if !committed {
			if aerr := m.b.Abort(context.WithoutCancel(ctx), b); aerr != nil {
				m.log.Warn("abort import", "image", v.Ref(), "err", aerr)
			}
		}
	}()
	st, err = Unpack(ctx, r, b.Root, Expect{TarDigest: v.TarDigest, TarSize: v.TarSize}, ExtractOptions{Progress: opts.Progress})
	if err != nil {
		return Snapshot{}, st, fmt.Errorf("import %s: %w", v.Ref(), err)
	}
	now := time.Now().UTC()
	snap = Snapshot{
		Name: name, Version: version, Arch: v.Arch, OS: v.OS, Method: v.Method,
		Source: v.Recipe, Created: now, Size: treeSize(b.Root),
		Fleet: v.Ref(), TarDigest: v.TarDigest,
	}
	if snap.Arch == "" {
		snap.Arch = Unknown
	}
	if err := m.writeMeta(snap); err != nil {
		return Snapshot{}, st, fmt.Errorf("import %s: write metadata: %w", v.Ref(), err)
	}
	if _, err := m.b.Commit(ctx, b, version); err != nil {
		if errors.Is(err, errdefs.ErrExists) {
			// Another import of the same version won; the metadata
			// written is the same tree's.
			s, ok, ferr := m.FindFleet(ctx, v)
			if ferr == nil && ok {
				return s, st, nil
			}
		}
		_ = os.Remove(m.metaPath(name, version))
		return Snapshot{}, st, fmt.Errorf("import %s: commit snapshot: %w", v.Ref(), err)
	}
	committed = true
	return snap, st, nil
}

// FleetSnapshots returns every fleet snapshot on this host (those with
// metadata naming their version), by local image name, oldest first.
func (m *Manager) FleetSnapshots(ctx context.Context) ([]Snapshot, error) {
	all, err := m.b.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	slices.Sort(all)
	var out []Snapshot
	for _, n := range all {
		if !IsFleet(n) {
			continue
		}
		snaps, err := m.Snapshots(ctx, n)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, s := range snaps {
			if s.TarDigest != "" {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// PruneFleet deletes the snapshots of fleet image name (the server's name)
// beyond the newest keep (by server version), except those a clone uses,
// those protect says a run is about to use, and those the backend reports
// busy. While a run holds the image (Hold) or another changer is at work
// it does nothing and returns nil: the next prune catches up.
func (m *Manager) PruneFleet(ctx context.Context, name string, keep int, protect func(Snapshot) bool) error {
	if keep < 1 {
		return fmt.Errorf("keep %d: at least one version stays: %w", keep, errdefs.ErrInvalid)
	}
	local := FleetImageName(name)
	lk, _, clones, err := m.lockInUse(ctx, local, "prune")
	if errors.Is(err, errdefs.ErrBusy) || errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lk.unlock()
	snaps, err := m.Snapshots(ctx, local)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, c := range clones {
		used[c.Snapshot] = true
	}
	// Newest first by the server's version (the snapshot version sorts
	// so, zero-padded).
	slices.SortFunc(snaps, func(a, b Snapshot) int { return strings.Compare(b.Version, a.Version) })
	for i, s := range snaps {
		if i < keep || used[s.Ref()] || (protect != nil && protect(s)) {
			continue
		}
		err := m.b.DeleteSnapshot(ctx, local, s.Version)
		if errors.Is(err, errdefs.ErrBusy) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete %s: %w", s.Ref(), err)
		}
		_ = os.Remove(m.metaPath(local, s.Version))
		m.log.Info("fleet image version removed (past [images] keep)", "image", s.Fleet, "snapshot", s.Ref())
	}
	// Not removeStaleMeta: an import in progress has written its
	// metadata and not committed yet.
	return nil
}

// PackSnapshot writes the snapshot ref ("name" for the newest,
// "name@version") to w in the fleet image format (Pack), for publishing
// it to the server. It packs a build area copied from the snapshot, so
// that no run's clone and no reaper is involved, and removes it after.
func (m *Manager) PackSnapshot(ctx context.Context, ref string, w io.Writer, opts PackOptions) (Snapshot, PackStats, error) {
	s, err := m.Resolve(ctx, ref)
	if err != nil {
		return Snapshot{}, PackStats{}, err
	}
	// Keep delete and prune out while the copy is made.
	release := m.Hold(s.Name)
	b, err := m.b.Begin(ctx, s.Name, s.Version)
	release()
	if err != nil {
		return Snapshot{}, PackStats{}, fmt.Errorf("copy %s to pack it: %w", s.Ref(), err)
	}
	defer func() {
		if aerr := m.b.Abort(context.WithoutCancel(ctx), b); aerr != nil {
			m.log.Warn("remove the copy packed", "ref", s.Ref(), "err", aerr)
		}
	}()
	st, err := Pack(ctx, b.Root, w, opts)
	if err != nil {
		return Snapshot{}, PackStats{}, fmt.Errorf("pack %s: %w", s.Ref(), err)
	}
	return s, st, nil
}

// Recipe is how s was made, as a fleet image's manifest records it:
// "version=bookworm packages=a,b" (empty fields left out).
func (s Snapshot) Recipe() string {
	var parts []string
	if s.MethodVersion != "" {
		parts = append(parts, "version="+s.MethodVersion)
	}
	if len(s.Packages) > 0 {
		parts = append(parts, "packages="+strings.Join(s.Packages, ","))
	}
	if s.Parent != "" {
		parts = append(parts, "updated-from="+s.Parent)
	}
	return strings.Join(parts, " ")
}

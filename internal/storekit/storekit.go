// Package storekit holds what kiln's storage backends (overlay, btrfs, ZFS)
// share: name and ref validation, build IDs, the per-build locks
// (internal/flock) that tell a live build from one whose process died, the
// order of an image's snapshots and the check that none is deleted under a
// clone.
package storekit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/flock"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// ValidRef splits "image@version" and reports whether both halves are
// valid names (api.ValidName: no "/", no "..").
func ValidRef(ref string) (image, version string, ok bool) {
	image, version, ok = strings.Cut(ref, "@")
	return image, version, ok && names.Valid(image) && names.Valid(version)
}

// NewID returns a random build ID (hex, valid as a name).
func NewID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails since Go 1.24
	return hex.EncodeToString(b[:])
}

// ValidID reports whether id looks like one NewID made, so a caller-supplied
// Build.ID can never point outside the build area.
func ValidID(id string) bool {
	return len(id) == 16 && strings.Trim(id, "0123456789abcdef") == ""
}

// Builds tracks the locks of the builds this process has open, by build ID.
// Safe for concurrent use.
type Builds struct {
	mu    sync.Mutex
	locks map[string]*flock.Lock
}

// Add records the lock of build id.
func (b *Builds) Add(id string, f *flock.Lock) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.locks == nil {
		b.locks = map[string]*flock.Lock{}
	}
	b.locks[id] = f
}

// Get returns the lock of build id, if this process holds it.
func (b *Builds) Get(id string) (*flock.Lock, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.locks[id]
	return f, ok
}

// Take removes build id and returns its lock, if held.
func (b *Builds) Take(id string) (*flock.Lock, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.locks[id]
	delete(b.locks, id)
	return f, ok
}

// Abandon gives up this process's hold on build id without removing it, as
// the death of the process would: a later Leftovers removes it. For crash
// tests (storagetest.Abandoner).
func (b *Builds) Abandon(id string) error {
	if l, ok := b.Take(id); ok {
		return l.Close()
	}
	return nil
}

// CheckName refuses a name that is not safe as one path element, naming
// what it is.
func CheckName(what, v string) error {
	if !names.Valid(v) {
		return fmt.Errorf("%s %q: %w: want letters, digits, '.', '_', '-' and no '/' or '..'", what, v, errdefs.ErrInvalid)
	}
	return nil
}

// CheckBuild refuses a build whose image name or ID could point outside
// the build area.
func CheckBuild(image, id string) error {
	if err := CheckName("image", image); err != nil {
		return err
	}
	if !ValidID(id) {
		return fmt.Errorf("build id %q: %w", id, errdefs.ErrInvalid)
	}
	return nil
}

// Keyed serialises work per key (e.g. per run ID) within one process.
type Keyed struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// Lock locks key and returns its unlock function.
func (k *Keyed) Lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// OldestFirst orders image's snapshots by creation time, then version (a
// snapshot without a creation time sorts first), as ImageStore.Snapshots
// returns them; an image without snapshots is errdefs.ErrNotFound.
func OldestFirst(image string, snaps []sandbox.SnapshotInfo) ([]sandbox.SnapshotInfo, error) {
	if len(snaps) == 0 {
		return nil, fmt.Errorf("image %s: %w", image, errdefs.ErrNotFound)
	}
	slices.SortFunc(snaps, func(a, b sandbox.SnapshotInfo) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Version, b.Version)
	})
	return snaps, nil
}

// NoCloneOf refuses, with errdefs.ErrBusy, to delete snapshot ref while a
// run's clone of it is among clones.
func NoCloneOf(ref string, clones []sandbox.Clone) error {
	for _, c := range clones {
		if c.Snapshot == ref {
			return fmt.Errorf("delete snapshot %s: %w: run %s has a clone of it", ref, errdefs.ErrBusy, c.RunID)
		}
	}
	return nil
}

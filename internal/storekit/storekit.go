// Package storekit holds what kiln's storage backends (overlay, btrfs, ZFS)
// share: name and ref validation, build IDs, and the per-build lock that
// tells a live build from one whose process died.
package storekit

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/kiln-build/kiln/names"
	"golang.org/x/sys/unix"
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

// ErrLocked is returned by TryLock when another open file holds the lock.
var ErrLocked = errors.New("lock held")

// TryLock takes an exclusive flock on path without blocking, creating the
// file if needed. flock belongs to the open file description, so the lock
// lives as long as the returned file stays open - in this process or, once
// the process dies, nowhere. It verifies after locking that path still
// names the locked inode: otherwise a concurrent holder unlinked it between
// our open and flock, and we would hold a lock nobody else can see.
func TryLock(path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s: %w", path, ErrLocked)
			}
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		fi, err1 := f.Stat()
		pi, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi, pi) {
			return f, nil
		}
		f.Close()
		if err1 != nil {
			return nil, err1
		}
		if err2 != nil && !errors.Is(err2, os.ErrNotExist) {
			return nil, err2
		}
	}
}

// Unlock removes the lock file and releases the lock, in that order, so
// nobody can lock the old inode while it is still linked.
func Unlock(f *os.File) error {
	err := os.Remove(f.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, f.Close())
}

// Builds tracks the locks of the builds this process has open, by build ID.
// Safe for concurrent use.
type Builds struct {
	mu    sync.Mutex
	locks map[string]*os.File
}

// Add records the lock of build id.
func (b *Builds) Add(id string, f *os.File) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.locks == nil {
		b.locks = map[string]*os.File{}
	}
	b.locks[id] = f
}

// Get returns the lock of build id, if this process holds it.
func (b *Builds) Get(id string) (*os.File, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.locks[id]
	return f, ok
}

// Take removes build id and returns its lock, if held.
func (b *Builds) Take(id string) (*os.File, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.locks[id]
	delete(b.locks, id)
	return f, ok
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

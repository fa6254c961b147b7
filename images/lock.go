package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/flock"
	"github.com/kiln-build/kiln/names"
)

// nameLock is the per-image flock that serialises create, update, delete and
// prune of one name across processes. The kernel drops it when the holder
// dies, so a killed build never leaves the name locked. The lock file records
// the holder's pid (for the error the loser sees) and the build root it works
// in (so the next holder can undo mounts a killed debootstrap left there).
type nameLock struct{ l *flock.Lock }

func (m *Manager) lockPath(name string) string { return filepath.Join(m.metaDir, name+".lock") }

// lock takes name's lock without waiting. When another process holds it,
// the error wraps errdefs.ErrBusy and names that process. prevRoot is the
// build root recorded by the previous holder, if it died mid-build.
func (m *Manager) lock(name, op string) (l *nameLock, prevRoot string, err error) {
	if err := os.MkdirAll(m.metaDir, 0o755); err != nil {
		return nil, "", err
	}
	// Read before locking: taking the lock rewrites the record.
	_, prev := flock.Holder(m.lockPath(name))
	fl, err := flock.TryLock(m.lockPath(name), 0o644)
	if errors.Is(err, flock.ErrHeld) {
		return nil, "", fmt.Errorf("cannot %s image %q: %w (or a worker is starting a run of it; try again): %w", op, name, err, errdefs.ErrBusy)
	}
	if err != nil {
		return nil, "", err
	}
	if len(prev) > 0 {
		prevRoot = prev[0]
	}
	return &nameLock{l: fl}, prevRoot, nil
}

// Hold keeps the changers of image name (create, update, delete, prune:
// they take its lock without waiting and fail) out until release: a
// worker holds it from resolving a run's image until the run's clone
// exists, after which delete and prune see the clone. It never waits:
// while a changer is at work, nothing is held and release does nothing
// (the committed snapshots a run resolves stay until the changer is done).
func (m *Manager) Hold(name string) (release func()) {
	if !names.Valid(name) {
		return func() {}
	}
	f, err := os.Open(m.lockPath(name))
	if err != nil {
		// No lock file: the image was never made here, so there is
		// nothing to keep changers out of.
		return func() {}
	}
	// Shared, so runs of one image do not keep each other out; the
	// changers' exclusive TryLock fails while any run holds it.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		return func() {}
	}
	return sync.OnceFunc(func() { f.Close() })
}

// touchLock makes name's lock file if it is missing, without locking it.
func (m *Manager) touchLock(name string) error {
	if err := os.MkdirAll(m.metaDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(m.lockPath(name), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// record writes our pid and the build root in use ("" when none).
func (l *nameLock) record(buildRoot string) error { return l.l.Record(buildRoot) }

func (l *nameLock) unlock() {
	_ = l.l.Record("")
	_ = l.l.Close()
}

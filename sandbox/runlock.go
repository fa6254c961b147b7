package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/flock"
)

// A run lock is an flock on <runs>/<run>/lock held for the whole life of a
// run by the process that drives it. The kernel drops it when that process
// dies, even by SIGKILL, which is what lets the reaper tell a live run from
// an orphan without any pid bookkeeping.
type runLock struct{ l *flock.Lock }

func acquireRunLock(dir string) (*runLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	l, err := flock.TryLock(filepath.Join(dir, "lock"), 0o600)
	if errors.Is(err, flock.ErrHeld) {
		return nil, fmt.Errorf("run %s: %w: %w", filepath.Base(dir), err, errdefs.ErrBusy)
	}
	if err != nil {
		return nil, err
	}
	return &runLock{l: l}, nil
}

// Hold takes the run lock of runID's key for a sandbox that this runner
// does not drive (an image update's), so that Reap leaves it alone until
// release, and reaps it once this process is gone. It returns the key to
// name the sandbox by.
func (r *Runner) Hold(runID string) (key string, release func(), err error) {
	key = r.Key(runID)
	if err := validRunID(key); err != nil {
		return "", nil, err
	}
	dir := filepath.Join(r.RunsDir, key)
	r.dirs.Lock()
	l, err := acquireRunLock(dir)
	r.dirs.Unlock()
	if err != nil {
		return "", nil, err
	}
	return key, func() {
		r.dirs.Lock()
		defer r.dirs.Unlock()
		l.release()
		_ = os.RemoveAll(dir)
	}, nil
}

func (l *runLock) release() {
	if l != nil {
		_ = l.l.Close()
	}
}

// runLockHeld reports whether a live process holds the lock of the run dir.
func runLockHeld(dir string) bool { return flock.Held(filepath.Join(dir, "lock")) }

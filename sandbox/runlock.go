package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// A run lock is an flock on <runs>/<run>/lock held for the whole life of a
// run by the process that drives it. The kernel drops it when that process
// dies, even by SIGKILL, which is what lets the reaper tell a live run from
// an orphan without any pid bookkeeping.
type runLock struct{ f *os.File }

func acquireRunLock(dir string) (*runLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("run %s is held by another process: %w", filepath.Base(dir), ErrBusy)
		}
		return nil, err
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return &runLock{f: f}, nil
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
	if l != nil && l.f != nil {
		_ = l.f.Close()
	}
}

// runLockHeld reports whether a live process holds the lock of the run dir.
func runLockHeld(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

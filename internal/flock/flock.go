// Package flock is kiln's one helper for the exclusive file locks that mark
// what a live process holds: a run, an image name, a shim anchor, a data
// dir. The kernel drops an flock when its holder dies, even by SIGKILL, so a
// lock is never left behind and "is it held?" tells a live holder from an
// orphan without pid bookkeeping.
package flock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrHeld is wrapped by TryLock's error when another process holds the lock.
var ErrHeld = errors.New("held by another process")

// HeldError says who holds a lock that TryLock could not take.
type HeldError struct {
	Path string
	// PID is the holder's pid as it recorded it, 0 if unknown.
	PID int
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is held by pid %d", e.Path, e.PID)
	}
	return fmt.Sprintf("%s is held by another process", e.Path)
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// Lock is a held lock. Close releases it.
type Lock struct{ f *os.File }

// TryLock takes the lock on path (created with perm) without waiting and
// records this process's pid in it. If another process holds it, the error
// is a *HeldError wrapping ErrHeld.
func TryLock(path string, perm os.FileMode) (*Lock, error) {
	return lock(path, perm, syscall.LOCK_EX|syscall.LOCK_NB)
}

// Wait takes the lock on path, waiting for its holder to release it.
func Wait(path string, perm os.FileMode) (*Lock, error) {
	return lock(path, perm, syscall.LOCK_EX)
}

func lock(path string, perm os.FileMode, how int) (*Lock, error) {
	var f *os.File
	for {
		var err error
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, perm)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := flock(f, how); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				pid, _ := Holder(path)
				return nil, &HeldError{Path: path, PID: pid}
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// A holder that Removed the file between our open and flock left
		// us locking an inode nobody else can see: open the path anew.
		fi, err1 := f.Stat()
		pi, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi, pi) {
			break
		}
		f.Close()
		if err1 != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err1)
		}
		if err2 != nil && !errors.Is(err2, os.ErrNotExist) {
			return nil, fmt.Errorf("lock %s: %w", path, err2)
		}
	}
	l := &Lock{f: f}
	if err := l.Record(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// Record rewrites the lock file's content: this process's pid on the first
// line, then extra lines (what the holder is working on, for the next
// holder to clean up after a crash).
func (l *Lock) Record(extra ...string) error {
	data := strconv.Itoa(os.Getpid()) + "\n"
	for _, e := range extra {
		data += e + "\n"
	}
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("record lock %s: %w", l.f.Name(), err)
	}
	if _, err := l.f.WriteAt([]byte(data), 0); err != nil {
		return fmt.Errorf("record lock %s: %w", l.f.Name(), err)
	}
	return nil
}

// Path is the lock file's path.
func (l *Lock) Path() string { return l.f.Name() }

// Remove deletes the lock file, then releases the lock, in that order, so
// nobody can take the old inode while it is still linked. For locks whose
// file marks a thing that is gone with them (a build area).
func (l *Lock) Remove() error {
	err := os.Remove(l.f.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, l.Close())
}

// Close releases the lock. Safe on a nil Lock and more than once.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the only descriptor releases the flock
	l.f = nil
	return err
}

// Holder reads what the last holder of path recorded: its pid (0 if none)
// and its extra lines. The holder may have died since; Held tells.
func Holder(path string) (pid int, extra []string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	pid, _ = strconv.Atoi(lines[0])
	return pid, lines[1:]
}

// Held reports whether a live process holds the lock on path. A missing
// file is not held.
func Held(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = flock(f, syscall.LOCK_UN)
	return false
}

package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// nameLock is the per-image flock that serialises create, update, delete and
// prune of one name across processes. The kernel drops it when the holder
// dies, so a killed build never leaves the name locked. The file records the
// holder's pid (for the error the loser sees) and the build root it works in
// (so the next holder can undo mounts a killed debootstrap left there).
type nameLock struct {
	f *os.File
}

func (m *Manager) lockPath(name string) string { return filepath.Join(m.metaDir, name+".lock") }

// lock takes name's lock without waiting. When another process holds it,
// the error wraps sandbox.ErrBusy and names that process. prevRoot is the
// build root recorded by the previous holder, if it died mid-build.
func (m *Manager) lock(name, op string) (l *nameLock, prevRoot string, err error) {
	if err := os.MkdirAll(m.metaDir, 0o755); err != nil {
		return nil, "", err
	}
	f, err := os.OpenFile(m.lockPath(name), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, "", err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if data, rerr := os.ReadFile(m.lockPath(name)); rerr == nil {
			if pid, _, _ := strings.Cut(string(data), "\n"); pid != "" {
				holder = "pid " + pid
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, "", fmt.Errorf("cannot %s image %q: %s holds its lock, or a worker is starting a run of it (%s); try again: %w", op, name, holder, m.lockPath(name), sandbox.ErrBusy)
		}
		return nil, "", fmt.Errorf("lock %s: %w", m.lockPath(name), err)
	}
	data := make([]byte, 4096)
	n, _ := f.ReadAt(data, 0)
	if lines := strings.Split(string(data[:n]), "\n"); len(lines) > 1 {
		prevRoot = lines[1]
	}
	l = &nameLock{f: f}
	if err := l.record(""); err != nil {
		l.unlock()
		return nil, "", err
	}
	return l, prevRoot, nil
}

// Hold keeps the changers of image name (create, update, delete, prune:
// they take its lock without waiting and fail) out until release: a
// worker holds it from resolving a run's image until the run's clone
// exists, after which delete and prune see the clone. It never waits:
// while a changer is at work, nothing is held and release does nothing
// (the committed snapshots a run resolves stay until the changer is done).
func (m *Manager) Hold(name string) (release func()) {
	if !api.ValidName(name) {
		return func() {}
	}
	f, err := os.OpenFile(m.lockPath(name), os.O_RDONLY, 0)
	if err != nil {
		// No lock file: the image was never made here, so there is
		// nothing to keep changers out of.
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		return func() {}
	}
	return sync.OnceFunc(func() { f.Close() })
}

// record writes our pid and the build root in use ("" when none).
func (l *nameLock) record(buildRoot string) error {
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	_, err := l.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"+buildRoot+"\n"), 0)
	return err
}

func (l *nameLock) unlock() {
	_ = l.record("")
	l.f.Close() // closing the only descriptor releases the flock
}

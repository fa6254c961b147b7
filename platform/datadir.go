package platform

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/flock"
)

// IdentityFile holds a data dir's identity: 16 hex digits made once, the
// first time a kiln process opens the data dir.
const IdentityFile = "identity"

// LockFile is the data dir's lock: a worker holds it exclusively for its
// whole life (and records its pid in it); `kiln exec` holds it shared.
const LockFile = "lock"

// ErrDataDirBusy: another process holds the data dir's lock.
var ErrDataDirBusy = errors.New("data dir in use")

// Identity returns the identity of the data dir at dir, making it on first
// use. Sandboxes, clones and shim anchors made from the data dir carry it,
// so that kiln processes of other data dirs on the same host leave them
// alone.
func Identity(dir string) (string, error) {
	p := filepath.Join(dir, IdentityFile)
	if id, err := readIdentity(p); err == nil {
		return id, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".identity-*")
	if err != nil {
		return "", fmt.Errorf("data dir identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(b[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("data dir identity: %w", err)
	}
	// Link, not rename: of two processes making it at once, the first
	// wins and the second reads the winner's.
	if err := os.Link(tmp.Name(), p); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("data dir identity: %w", err)
	}
	return readIdentity(p)
}

func readIdentity(p string) (string, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(data))
	if !ValidIdentity(id) {
		return "", fmt.Errorf("%s: %q is not an identity (16 hex digits); remove the file only if no sandbox of this data dir is left: %w", p, id, errdefs.ErrInvalid)
	}
	return id, nil
}

// ValidIdentity reports whether id looks like a data dir or server
// identity: 16 lower-case hex digits.
func ValidIdentity(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// DataDirLock is a held lock on a data dir. The kernel drops it when the
// holder dies, even by SIGKILL.
type DataDirLock struct {
	excl   *flock.Lock // a worker's
	shared *os.File    // an exec's
}

// LockDataDir takes dir's lock without waiting: exclusive for a worker,
// shared for a one-off run (`kiln exec`) that may run beside others of its
// kind but never beside a worker, whose leftovers it would otherwise reap.
// what names the taker in the error the loser sees. When another process
// holds the lock, the error wraps ErrDataDirBusy and names its pid.
func LockDataDir(dir string, exclusive bool, what string) (*DataDirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	p := filepath.Join(dir, LockFile)
	busy := func(recorded int) error {
		return fmt.Errorf("%s: data dir %s is in use by %s (lock %s); stop that process or give this one another data_dir: %w",
			what, dir, describeHolders(p, recorded), p, ErrDataDirBusy)
	}
	if exclusive {
		// Records the worker's pid, for the error another taker sees.
		l, err := flock.TryLock(p, 0o644)
		var held *flock.HeldError
		if errors.As(err, &held) {
			return nil, busy(held.PID)
		}
		if err != nil {
			return nil, err
		}
		return &DataDirLock{excl: l}, nil
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		// Only a worker holds it exclusively, and it recorded its pid.
		pid, _ := flock.Holder(p)
		return nil, busy(pid)
	}
	return &DataDirLock{shared: f}, nil
}

// describeHolders names the processes holding the lock file at p: those
// the kernel lists (shared holders record nowhere), else the pid the
// holder recorded.
func describeHolders(p string, recorded int) string {
	pids := lockHolders(p)
	if len(pids) == 0 && recorded > 0 {
		pids = []int{recorded}
	}
	if len(pids) == 0 {
		return "another process"
	}
	var parts []string
	for _, pid := range pids {
		desc := "pid " + strconv.Itoa(pid)
		if cmd := processCommand(pid); cmd != "" {
			desc += " (" + cmd + ")"
		}
		parts = append(parts, desc)
	}
	return strings.Join(parts, ", ")
}

// Release drops the lock. Idempotent; safe on nil.
func (l *DataDirLock) Release() {
	if l == nil {
		return
	}
	_ = l.excl.Close()
	if l.shared != nil {
		_ = l.shared.Close()
		l.shared = nil
	}
}

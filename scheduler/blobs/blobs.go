// Package blobs stores content-addressed files (job inputs, run artifacts)
// by sha256 on disk, with resumable uploads that are verified before they
// become visible.
package blobs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"
)

var (
	// ErrOffset: an upload chunk does not start where the partial upload ends.
	ErrOffset = errors.New("upload offset mismatch")
	// ErrDigest: the complete upload does not hash to the announced sha256;
	// the partial upload is discarded.
	ErrDigest = errors.New("sha256 mismatch")
	// ErrBadSHA: not 64 lowercase hex digits.
	ErrBadSHA = errors.New("sha256 must be 64 lowercase hex digits")
	// ErrTooLarge: the chunk runs past the announced size.
	ErrTooLarge = errors.New("upload exceeds announced size")
)

var shaRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSHA reports whether s is a lowercase hex sha256.
func ValidSHA(s string) bool { return shaRe.MatchString(s) }

// Store is a blob directory. Its methods are safe for concurrent use;
// uploads of the same sha256 are serialised.
type Store struct {
	dir   string
	mu    sync.Mutex
	locks map[string]*shaLock
}

// shaLock serialises uploads of one sha256; users counts holders and
// waiters so that the entry can go when the last one leaves.
type shaLock struct {
	sync.Mutex
	users int
}

// Open makes (if needed) and opens a blob directory.
func Open(dir string) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "partial")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("blobs: %w", err)
		}
	}
	return &Store{dir: dir, locks: map[string]*shaLock{}}, nil
}

func (s *Store) path(sha string) string     { return filepath.Join(s.dir, sha[:2], sha) }
func (s *Store) partPath(sha string) string { return filepath.Join(s.dir, "partial", sha) }

func (s *Store) lock(sha string) func() {
	s.mu.Lock()
	l, ok := s.locks[sha]
	if !ok {
		l = &shaLock{}
		s.locks[sha] = l
	}
	l.users++
	s.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.locks, sha)
		}
		s.mu.Unlock()
	}
}

// Stat returns whether sha is stored (and its size), else the bytes of a
// partial upload received so far.
func (s *Store) Stat(sha string) (complete bool, size int64, err error) {
	if !ValidSHA(sha) {
		return false, 0, ErrBadSHA
	}
	if fi, err := os.Stat(s.path(sha)); err == nil {
		return true, fi.Size(), nil
	}
	fi, err := os.Stat(s.partPath(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	return false, fi.Size(), nil
}

// Has reports whether sha is stored.
func (s *Store) Has(sha string) bool {
	ok, _, err := s.Stat(sha)
	return err == nil && ok
}

// Open opens a stored blob.
func (s *Store) Open(sha string) (*os.File, error) {
	if !ValidSHA(sha) {
		return nil, ErrBadSHA
	}
	return os.Open(s.path(sha))
}

// Write appends r (bytes [offset, ...) of a blob of total size) to the
// partial upload of sha. When the partial upload reaches size it is
// verified, fsynced and renamed into place. It returns the bytes received.
// A blob already stored answers complete at once (r is not read).
func (s *Store) Write(sha string, offset, size int64, r io.Reader) (received int64, complete bool, err error) {
	if !ValidSHA(sha) {
		return 0, false, ErrBadSHA
	}
	unlock := s.lock(sha)
	defer unlock()
	if fi, err := os.Stat(s.path(sha)); err == nil {
		return fi.Size(), true, nil
	}
	part := s.partPath(sha)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	have := fi.Size()
	if offset != have || have > size {
		return have, false, ErrOffset
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return have, false, err
	}
	n, err := io.Copy(f, io.LimitReader(r, size-have+1))
	have += n
	if have > size {
		// Keep what was announced out of the partial file.
		_ = f.Truncate(size)
		return size, false, ErrTooLarge
	}
	if serr := f.Sync(); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return have, false, fmt.Errorf("blob upload: %w", err)
	}
	if have < size {
		return have, false, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return have, false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return have, false, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		os.Remove(part)
		return 0, false, fmt.Errorf("%w: data hashes to %s", ErrDigest, got)
	}
	dst := s.path(sha)
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return have, false, err
	}
	if err := os.Rename(part, dst); err != nil {
		return have, false, err
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return have, false, err
	}
	return have, true, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

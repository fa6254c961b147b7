// Package blobs stores content-addressed files (job inputs, run artifacts)
// by sha256 on disk, with resumable uploads that are verified before they
// become visible.
//
// A partial upload belongs to one uploader (a session per uploader and
// sha256), so nobody can poison another's upload with wrong bytes; it is
// removed when it fails to verify and, by Sweep, when it is left alone too
// long. No lock is ever waited for while a request body is read: a second
// request for a session that is busy gets a private session of its own (at
// offset 0) or ErrOffset with 0 received (then it restarts at 0). Several
// processes (server replicas) may share one directory: a Locker makes a
// session busy for all of them.
package blobs

import (
	"context"
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
	"time"
)

var (
	// ErrOffset: an upload chunk does not start where the uploader's
	// partial upload ends.
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

// Locker excludes the other processes sharing a blob directory from a
// partial upload session. TryLock takes the lock named key without
// waiting; ok false means another process holds it. unlock releases it.
// Within one process the Store excludes its own requests itself, so a
// Locker need not exclude them. A lock lost early (say with a database
// connection) can let two processes write one session: the sha256 check of
// the complete upload still keeps the mix out of the store.
type Locker interface {
	TryLock(ctx context.Context, key string) (unlock func(), ok bool, err error)
}

// Store is a blob directory. Its methods are safe for concurrent use.
type Store struct {
	dir    string
	locker Locker // nil: no other process shares dir
	mu     sync.Mutex
	// busy holds the sessions (partial file paths) a request is writing.
	busy map[string]bool
}

// Open makes (if needed) and opens a blob directory; locker (nil when no
// other process uses dir) makes sessions busy across processes.
func Open(dir string, locker Locker) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "partial"), filepath.Join(dir, trashDir)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("blobs: %w", err)
		}
	}
	return &Store{dir: dir, locker: locker, busy: map[string]bool{}}, nil
}

func (s *Store) path(sha string) string { return filepath.Join(s.dir, sha[:2], sha) }

// partPath is the session of uploader for sha. The uploader (any string
// naming who uploads, e.g. a token's hash) is hashed into a directory name.
func (s *Store) partPath(uploader, sha string) string {
	h := sha256.Sum256([]byte(uploader))
	return filepath.Join(s.dir, "partial", hex.EncodeToString(h[:16]), sha)
}

// claim marks the session at part busy, in this process and through the
// Locker in the others, and returns its release; ok false: another
// request holds it.
func (s *Store) claim(ctx context.Context, part string) (release func(), ok bool, err error) {
	s.mu.Lock()
	if s.busy[part] {
		s.mu.Unlock()
		return nil, false, nil
	}
	s.busy[part] = true
	s.mu.Unlock()
	local := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.busy, part)
	}
	if s.locker == nil {
		return local, true, nil
	}
	key, err := filepath.Rel(s.dir, part)
	if err != nil {
		local()
		return nil, false, err
	}
	unlock, ok, err := s.locker.TryLock(ctx, filepath.ToSlash(key))
	if err != nil || !ok {
		local()
		return nil, false, err
	}
	return func() { unlock(); local() }, true, nil
}

// Size returns whether sha is stored, and its size. Answering stored
// renews the blob's grace period against collection (collect.go): the
// caller is about to rely on it.
func (s *Store) Size(sha string) (stored bool, size int64, err error) {
	if !ValidSHA(sha) {
		return false, 0, ErrBadSHA
	}
	fi, err := use(s.path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	return true, fi.Size(), nil
}

// Stat returns whether sha is stored (and its size), else the bytes of
// uploader's partial upload received so far.
func (s *Store) Stat(sha, uploader string) (complete bool, size int64, err error) {
	if ok, n, err := s.Size(sha); ok || err != nil {
		return ok, n, err
	}
	return false, s.Received(sha, uploader), nil
}

// Received is the size of uploader's partial upload of sha (0: none).
func (s *Store) Received(sha, uploader string) int64 {
	if !ValidSHA(sha) {
		return 0
	}
	fi, err := os.Stat(s.partPath(uploader, sha))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Has reports whether sha is stored.
func (s *Store) Has(sha string) bool {
	ok, _, err := s.Size(sha)
	return err == nil && ok
}

// Open opens a stored blob.
func (s *Store) Open(sha string) (*os.File, error) {
	if !ValidSHA(sha) {
		return nil, ErrBadSHA
	}
	return os.Open(s.path(sha))
}

// Write appends r (bytes [offset, ...) of a blob of total size) to
// uploader's partial upload of sha; offset 0 always starts it anew. When
// the partial upload reaches size it is verified, fsynced and renamed into
// place. It returns the bytes received. A blob already stored answers
// complete at once (r is not read) unless prove is set: then the bytes
// must be sent and verified like any upload, so that completing means the
// uploader holds the content (not just its sha256).
func (s *Store) Write(ctx context.Context, sha, uploader string, offset, size int64, r io.Reader, prove bool) (received int64, complete bool, err error) {
	if !ValidSHA(sha) {
		return 0, false, ErrBadSHA
	}
	if !prove {
		if fi, err := use(s.path(sha)); err == nil {
			return fi.Size(), true, nil
		}
	}
	part := s.partPath(uploader, sha)
	if err := os.MkdirAll(filepath.Dir(part), 0o750); err != nil {
		return 0, false, err
	}
	var f *os.File
	release, ok, err := s.claim(ctx, part)
	if err != nil {
		return 0, false, fmt.Errorf("blob upload: %w", err)
	}
	if ok {
		defer release()
		if f, err = os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o640); err != nil {
			return 0, false, err
		}
	} else {
		// The same uploader is sending this blob in another request (two
		// runs on one host with the same artifact): never wait for it.
		if offset != 0 {
			return 0, false, ErrOffset
		}
		if f, err = os.CreateTemp(filepath.Dir(part), sha+".*"); err != nil {
			return 0, false, err
		}
		part = f.Name()
		defer os.Remove(part) // renamed away when complete
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	have := fi.Size()
	if offset == 0 && have != 0 {
		// The uploader starts over (a mismatch it cannot resolve, or a
		// new size): what it sent before is dropped.
		if err := f.Truncate(0); err != nil {
			return have, false, err
		}
		have = 0
	}
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
	if _, err := use(dst); err == nil {
		// Stored meanwhile (or before, when proving): same content.
		os.Remove(part)
		return have, true, nil
	}
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

// Sweep removes partial uploads that got no byte since before, except
// those a request is writing now. It returns how many it removed.
func (s *Store) Sweep(ctx context.Context, before time.Time) (int, error) {
	removed := 0
	root := filepath.Join(s.dir, "partial")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil || !fi.ModTime().Before(before) {
			return nil
		}
		release, ok, err := s.claim(ctx, p)
		if err != nil || !ok {
			return err
		}
		defer release()
		if err := os.Remove(p); err == nil {
			removed++
		}
		return nil
	})
	// Session directories (one per uploader) stay: removing one could race
	// an upload about to create its file in it.
	return removed, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

package blobs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Collection: the server removes a blob file once nothing references it
// (docs/retention.md). Which blobs are referenced is the database's to
// say; this file keeps the two things only the directory knows:
//
//   - When a blob was last used. Every lookup that answers "stored" (Size,
//     Stat, Has, and Write finding the blob there) renews the file's
//     modification time, so a blob an uploader was just told it need not
//     send, or a result or a job add just checked, is young, and a sweep
//     leaves young files alone (its grace period) even though no row
//     references them yet.
//   - That renewal and removal never cross: Remove first renames the file
//     into trash/ (atomically: from then on a lookup answers "not
//     stored", and the uploader sends the bytes again), then looks at the
//     modification time the renamed file carries. A lookup that renewed
//     it before the rename is seen, and the file is put back; one after
//     the rename never said "stored".
//
// A process killed between the two steps leaves the file in trash/:
// RestoreTrash, run at the start of each sweep, puts such files back, and
// the sweep decides on them again.

// trashDir holds files a Remove took out of place and has not yet
// decided on.
const trashDir = "trash"

// use renews path's modification time (see above), then stats it. The
// renewal comes first and is the existence check: a file a sweep moved to
// trash/ before it is "not stored" (fs.ErrNotExist), and one moved after
// carries the new time, which the sweep sees and puts the file back.
func use(path string) (fs.FileInfo, error) {
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		return nil, err
	}
	return os.Stat(path)
}

// Blob is one stored blob file as Walk sees it.
type Blob struct {
	SHA256  string
	Size    int64
	ModTime time.Time
}

// Walk calls fn for every stored blob (not partial uploads, not trash),
// in no particular order; an error from fn stops it.
func (s *Store) Walk(ctx context.Context, fn func(Blob) error) error {
	tops, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("blobs: %w", err)
	}
	for _, top := range tops {
		if !top.IsDir() || len(top.Name()) != 2 || !isHex(top.Name()) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := os.ReadDir(filepath.Join(s.dir, top.Name()))
		if err != nil {
			return fmt.Errorf("blobs: %w", err)
		}
		for _, e := range ents {
			name := e.Name()
			if !ValidSHA(name) || !strings.HasPrefix(name, top.Name()) {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			if err != nil {
				return fmt.Errorf("blobs: %w", err)
			}
			if err := fn(Blob{SHA256: name, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Remove removes blob sha unless it was used (looked up as stored, or
// written) after notAfter. removed says whether it went, size its size.
// A blob that is not there is not an error (removed false).
func (s *Store) Remove(sha string, notAfter time.Time) (removed bool, size int64, err error) {
	if !ValidSHA(sha) {
		return false, 0, ErrBadSHA
	}
	dst := s.path(sha)
	tmp := filepath.Join(s.dir, trashDir, sha)
	if err := os.Rename(dst, tmp); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("blobs: %w", err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return false, 0, fmt.Errorf("blobs: %w", err)
	}
	if fi.ModTime().After(notAfter) {
		// Used while the sweep decided: back into place.
		return false, 0, s.putBack(tmp, dst)
	}
	if err := os.Remove(tmp); err != nil {
		return false, 0, fmt.Errorf("blobs: %w", err)
	}
	return true, fi.Size(), nil
}

// putBack moves a file out of trash to dst, unless an upload stored the
// blob there meanwhile (the same content): then the trash copy goes.
func (s *Store) putBack(tmp, dst string) error {
	if err := os.Link(tmp, dst); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("blobs: %w", err)
	}
	if err := os.Remove(tmp); err != nil {
		return fmt.Errorf("blobs: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

// RestoreTrash puts back what a Remove interrupted by a crash left in
// trash/ (see above); it returns how many files it put back.
func (s *Store) RestoreTrash() (int, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, trashDir))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("blobs: %w", err)
	}
	n := 0
	for _, e := range ents {
		tmp := filepath.Join(s.dir, trashDir, e.Name())
		if !ValidSHA(e.Name()) {
			_ = os.Remove(tmp)
			continue
		}
		dst := s.path(e.Name())
		if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
			return n, fmt.Errorf("blobs: %w", err)
		}
		if err := s.putBack(tmp, dst); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Path is where blob sha's file lives (tests look at the disk).
func (s *Store) Path(sha string) string { return s.path(sha) }

package blobs

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzWrite: the blob upload's sha256 (path), uploader, offset, size and
// body come from a client. Whatever they are, Write never panics, never
// writes outside the store's directory, answers a received count within
// [0, size], and a blob it stores (in two chunks or one) always hashes to
// its name: an upload cannot plant content under another blob's sha256.
func FuzzWrite(f *testing.F) {
	good := []byte("hello blob")
	f.Add(sum(good), "tok", int64(0), int64(len(good)), good, 4)
	f.Add(sum(good), "tok", int64(0), int64(len(good)), []byte("hello blub"), 10)
	f.Add(sum(good), "../../x", int64(3), int64(len(good)), good, 0)
	f.Add("../../../../etc/passwd", "tok", int64(0), int64(1), []byte("x"), 1)
	f.Add(strings.ToUpper(sum(good)), "", int64(0), int64(len(good)), good, 5)
	f.Add(sum(nil), "t", int64(0), int64(0), []byte{}, 0)
	f.Add(sum(good), "t", int64(0), int64(3), good, 2)
	f.Fuzz(func(t *testing.T, sha, uploader string, offset, size int64, data []byte, cut int) {
		base := t.TempDir()
		dir := filepath.Join(base, "store")
		s, err := Open(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if size < 0 || offset < 0 || offset > size {
			return // refused by the HTTP handler before Write
		}
		cut = min(max(cut, 0), len(data))
		ctx := context.Background()
		got, complete, err := s.Write(ctx, sha, uploader, offset, size, bytes.NewReader(data[:cut]), false)
		if err == nil && !complete {
			got, complete, err = s.Write(ctx, sha, uploader, got, size, bytes.NewReader(data[cut:]), true)
		}
		if got < 0 || got > size {
			t.Fatalf("received %d of a %d byte blob", got, size)
		}
		if complete && err == nil && !s.Has(sha) {
			t.Fatalf("complete, but %s is not stored", sha)
		}
		if entries, err := os.ReadDir(base); err != nil || len(entries) != 1 {
			t.Fatalf("beside the store: %v %v", entries, err)
		}
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				if d != nil && d.IsDir() && d.Name() == "partial" {
					return filepath.SkipDir
				}
				return err
			}
			if !d.Type().IsRegular() {
				t.Errorf("%s is not a regular file", p)
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if sum(b) != d.Name() || filepath.Base(filepath.Dir(p)) != d.Name()[:2] {
				t.Errorf("%s holds data hashing to %s", p, sum(b))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

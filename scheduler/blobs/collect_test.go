package blobs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func stored(t *testing.T, s *Store, data []byte, age time.Duration) string {
	t.Helper()
	sha := sum(data)
	if _, done, err := s.Write(context.Background(), sha, "u", 0, int64(len(data)), bytes.NewReader(data), false); err != nil || !done {
		t.Fatalf("write: %v %v", done, err)
	}
	old := time.Now().Add(-age)
	if err := os.Chtimes(s.Path(sha), old, old); err != nil {
		t.Fatal(err)
	}
	return sha
}

// TestRemoveRespectsUse: a blob used (looked up as stored, or written
// again) after the sweep's cutoff stays; an unused one goes, and Walk
// sees exactly what is stored.
func TestRemoveRespectsUse(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cutoff := time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name string
		use  func(sha string, data []byte)
		gone bool
	}{
		{"unused", func(string, []byte) {}, true},
		{"Size", func(sha string, _ []byte) { s.Size(sha) }, false},
		{"Has", func(sha string, _ []byte) { s.Has(sha) }, false},
		{"Stat", func(sha string, _ []byte) { s.Stat(sha, "x") }, false},
		{"Write of a stored blob", func(sha string, data []byte) {
			s.Write(context.Background(), sha, "v", 0, int64(len(data)), bytes.NewReader(data), false)
		}, false},
		{"Open only", func(sha string, _ []byte) {
			f, err := s.Open(sha)
			if err == nil {
				f.Close()
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte("blob " + tc.name)
			sha := stored(t, s, data, 2*time.Hour)
			tc.use(sha, data)
			removed, size, err := s.Remove(sha, cutoff)
			if err != nil {
				t.Fatal(err)
			}
			if removed != tc.gone || s.Has(sha) == tc.gone {
				t.Fatalf("removed %v (still stored: %v), want removed %v", removed, !tc.gone, tc.gone)
			}
			if removed && size != int64(len(data)) {
				t.Fatalf("size %d, want %d", size, len(data))
			}
		})
	}
	if removed, _, err := s.Remove(sum([]byte("never stored")), cutoff); removed || err != nil {
		t.Fatalf("removing a blob not stored: %v %v", removed, err)
	}
	var seen []string
	if err := s.Walk(context.Background(), func(b Blob) error { seen = append(seen, b.SHA256); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 4 {
		t.Fatalf("walk saw %d blobs, want the 4 kept", len(seen))
	}
}

// TestRestoreTrash: a file a Remove left in trash (killed between its
// rename and its decision) is put back, so that the next sweep decides
// on it again instead of leaving it there forever; junk in trash goes.
func TestRestoreTrash(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	sha := stored(t, s, []byte("interrupted"), 2*time.Hour)
	if err := os.MkdirAll(filepath.Join(dir, trashDir), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.Path(sha), filepath.Join(dir, trashDir, sha)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, trashDir, "junk"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	n, err := s.RestoreTrash()
	if err != nil || n != 1 {
		t.Fatalf("restore: %d %v", n, err)
	}
	if !s.Has(sha) {
		t.Fatal("the interrupted blob is not back")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, trashDir)); len(ents) != 0 {
		t.Fatalf("trash still holds %d files", len(ents))
	}
}

// TestRemoveRacesLookups: lookups that answer "stored" while Remove
// runs never see the file go afterwards: whatever the interleaving, a
// lookup that said stored leaves the blob in place.
func TestRemoveRacesLookups(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		data := []byte{byte(i), byte(i >> 8), 'r'}
		sha := stored(t, s, data, 2*time.Hour)
		var wg sync.WaitGroup
		var said bool
		wg.Add(1)
		go func() { defer wg.Done(); said = s.Has(sha) }()
		if _, _, err := s.Remove(sha, time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if said && !s.Has(sha) {
			t.Fatalf("blob %d: a lookup said stored, and then Remove removed it", i)
		}
	}
}

package cache

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMerge(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "amd64")
	write(t, filepath.Join(dst, "old.deb"), "original")
	write(t, filepath.Join(src, "old.deb"), "replaced by a job")
	write(t, filepath.Join(src, "archives", "new.deb"), "new")
	write(t, filepath.Join(src, "secret"), "host file")
	if err := os.Symlink("/etc/shadow", filepath.Join(src, "archives", "link.deb")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(src, "secret"), filepath.Join(src, "dirlink")); err != nil {
		t.Fatal(err)
	}
	n, err := Merge(src, dst, filepath.Dir(dst), 0)
	if err != nil || n != 2 {
		t.Fatalf("merged %d, %v; want 2 (new.deb, secret)", n, err)
	}
	for _, c := range []struct{ path, want string }{
		{"old.deb", "original"},
		{"archives/new.deb", "new"},
	} {
		t.Run(c.path, func(t *testing.T) {
			got, err := os.ReadFile(filepath.Join(dst, c.path))
			if err != nil || string(got) != c.want {
				t.Fatalf("%s = %q, %v; want %q", c.path, got, err, c.want)
			}
		})
	}
	for _, p := range []string{"archives/link.deb", "dirlink"} {
		if _, err := os.Lstat(filepath.Join(dst, p)); !os.IsNotExist(err) {
			t.Errorf("%s was merged (%v)", p, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dst, "archives"))
	if len(entries) != 1 {
		t.Errorf("archives holds %v, want only new.deb (no temporary files)", entries)
	}
	// Merging the same layer again adds nothing.
	if n, err := Merge(src, dst, filepath.Dir(dst), 0); err != nil || n != 0 {
		t.Fatalf("second merge added %d, %v", n, err)
	}
}

func TestEvictLRU(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	files := []struct {
		name string
		age  time.Duration
	}{{"amd64/a", 3 * time.Hour}, {"arm64/b", 2 * time.Hour}, {"amd64/c", time.Hour}, {"amd64/d", 0}}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		write(t, p, "0123456789")
		at := now.Add(-f.age)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		max  int64
		left []string
	}{
		{"fits", 40, []string{"amd64/a", "amd64/c", "amd64/d", "arm64/b"}},
		{"oldest-first", 25, []string{"amd64/c", "amd64/d"}},
		{"all", 0, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Evict(dir, c.max); err != nil {
				t.Fatal(err)
			}
			got, err := Files(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range got {
				rel, _ := filepath.Rel(dir, f.Path)
				names = append(names, rel)
			}
			if len(names) != len(c.left) {
				t.Fatalf("left %v, want %v", names, c.left)
			}
			for i := range names {
				if names[i] != c.left[i] {
					t.Fatalf("left %v, want %v", names, c.left)
				}
			}
		})
	}
}

// A merge into a cache with max_size never grows it past the bound: it
// evicts the least recently used files first to make room for each file,
// and skips a file larger than the bound.
func TestMergeKeepsMaxSize(t *testing.T) {
	top := t.TempDir()
	dst := filepath.Join(top, "owners", "local", "amd64")
	old := time.Now().Add(-time.Hour)
	for _, n := range []string{"old1", "old2"} {
		p := filepath.Join(top, "amd64", n)
		write(t, p, string(make([]byte, 400)))
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	src := t.TempDir()
	write(t, filepath.Join(src, "a"), string(make([]byte, 300)))
	write(t, filepath.Join(src, "b"), string(make([]byte, 300)))
	write(t, filepath.Join(src, "huge"), string(make([]byte, 5000)))
	const limit = 1000
	n, err := Merge(src, dst, top, limit)
	if err != nil || n != 2 {
		t.Fatalf("merged %d, %v; want 2 (a and b; huge is past the bound)", n, err)
	}
	files, err := Files(top)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	var names []string
	for _, f := range files {
		total += f.Size
		rel, _ := filepath.Rel(top, f.Path)
		names = append(names, rel)
	}
	if total > limit {
		t.Fatalf("the merge grew the cache to %d bytes (%v), past max_size %d", total, names, limit)
	}
	for _, want := range []string{"owners/local/amd64/a", "owners/local/amd64/b"} {
		if !slices.Contains(names, want) {
			t.Fatalf("cache holds %v, want %s merged", names, want)
		}
	}
}

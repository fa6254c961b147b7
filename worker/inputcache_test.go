package worker

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"
)

// TestPruneInputCache: past the bound the least recently used inputs
// go, never one used within the grace period, and interrupted downloads
// go once old.
func TestPruneInputCache(t *testing.T) {
	now := time.Now()
	type f struct {
		name string
		size int
		age  time.Duration
	}
	for _, tc := range []struct {
		name  string
		files []f
		limit int64
		left  []string
	}{
		{"under the bound", []f{{"a", 10, 3 * time.Hour}, {"b", 10, 2 * time.Hour}}, 20, []string{"a", "b"}},
		{"oldest use goes first", []f{{"a", 10, 3 * time.Hour}, {"b", 10, 5 * time.Hour}, {"c", 10, 2 * time.Hour}}, 20, []string{"a", "c"}},
		{"until under the bound", []f{{"a", 10, 3 * time.Hour}, {"b", 10, 5 * time.Hour}, {"c", 10, 2 * time.Hour}}, 10, []string{"c"}},
		{"recent uses stay over the bound", []f{{"a", 10, time.Minute}, {"b", 10, 5 * time.Hour}, {"c", 10, 2 * time.Minute}}, 5, []string{"a", "c"}},
		{"old interrupted downloads go", []f{{".dl-1", 10, 2 * time.Hour}, {".dl-2", 10, time.Minute}, {"a", 10, time.Hour * 3}}, 100, []string{".dl-2", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, x := range tc.files {
				p := filepath.Join(dir, x.name)
				if err := os.WriteFile(p, make([]byte, x.size), 0o640); err != nil {
					t.Fatal(err)
				}
				then := now.Add(-x.age)
				if err := os.Chtimes(p, then, then); err != nil {
					t.Fatal(err)
				}
			}
			if _, _, err := pruneInputCache(dir, tc.limit, time.Hour, now); err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(dir)
			var left []string
			for _, e := range ents {
				left = append(left, e.Name())
			}
			sort.Strings(left)
			if !slices.Equal(left, tc.left) {
				t.Fatalf("left %v, want %v", left, tc.left)
			}
		})
	}
}

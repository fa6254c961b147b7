package worker

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The input cache (<data_dir>/cache/inputs) keeps each job input a host
// downloaded, by sha256, so that the next run of the job does not fetch it
// again. It is bounded by [run] input_cache_max (docs/retention.md): a
// file's modification time is renewed at each use, and past the bound the
// least recently used files go. A file used within inputCacheGrace stays
// whatever the bound: a run that was handed its path copies it into its
// sandbox soon after (sandbox.placeInputs). Downloads a crash interrupted
// (.dl-* temp files) go once they are older than the grace period.

// inputCacheGrace protects the inputs of runs that are starting.
const inputCacheGrace = time.Hour

// useInput renews a cached input's time; false: it is not cached.
func useInput(path string) bool {
	now := time.Now()
	return os.Chtimes(path, now, now) == nil
}

// pruneInputCache removes files of dir, least recently used first, until
// they hold at most limit bytes, and interrupted downloads; files used
// after now-grace stay. It returns how many files it removed and their
// bytes.
func pruneInputCache(dir string, limit int64, grace time.Duration, now time.Time) (removed int, freed int64, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	type file struct {
		path string
		size int64
		used time.Time
	}
	var files []file
	var total int64
	cutoff := now.Add(-grace)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".dl-") {
			if fi.ModTime().Before(cutoff) && os.Remove(p) == nil {
				removed++
				freed += fi.Size()
			}
			continue
		}
		files = append(files, file{p, fi.Size(), fi.ModTime()})
		total += fi.Size()
	}
	slices.SortFunc(files, func(a, b file) int { return a.used.Compare(b.used) })
	for _, f := range files {
		if total <= limit || !f.used.Before(cutoff) {
			break
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, freed, err
		}
		removed++
		freed += f.size
		total -= f.size
	}
	return removed, freed, nil
}

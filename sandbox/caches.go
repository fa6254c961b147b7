package sandbox

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/errdefs"
)

// SelectCaches returns the host's caches a job names, in the job's order;
// a name the host does not define is refused: a job picks from what the
// admin configured, never a path of its own.
func SelectCaches(defined map[string]cache.Def, names []string) ([]cache.Def, error) {
	out := make([]cache.Def, 0, len(names))
	for _, n := range names {
		d, ok := defined[n]
		if !ok {
			return nil, fmt.Errorf("job asks for cache %q, which this host does not define: %w", n, errdefs.ErrNotFound)
		}
		out = append(out, d)
	}
	return out, nil
}

// cacheLayer is where one run's layer of one cache lives on the host:
// upper and work of its overlay, on the clone's disk-limited filesystem
// when its storage has one (Clone.Scratch), and merged, bind-mounted at
// the target, in the run's directory.
type cacheLayer struct {
	def                 cache.Def
	lower               string
	upper, work, merged string
}

// cacheLayers are the layers of the run in dir; scratch is its clone's
// Clone.Scratch ("": the layers' upper and work dirs go in dir).
func cacheLayers(dir, scratch, arch, owner string, defs []cache.Def) ([]cacheLayer, error) {
	out := make([]cacheLayer, 0, len(defs))
	for _, d := range defs {
		lower, err := d.Tree(owner, cmp.Or(arch, runtime.GOARCH))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalid)
		}
		rw := filepath.Join(cmp.Or(scratch, dir), "caches", d.Name)
		out = append(out, cacheLayer{
			def:    d,
			lower:  lower,
			upper:  filepath.Join(rw, "upper"),
			work:   filepath.Join(rw, "work"),
			merged: filepath.Join(dir, "caches", d.Name, "merged"),
		})
	}
	return out, nil
}

// mountCaches gives the run a fresh layer over each cache it names.
func mountCaches(dir, scratch string, layers []cacheLayer) ([]Mount, error) {
	if err := unmountCaches(dir); err != nil {
		return nil, err
	}
	if err := removeLayers(dir, scratch); err != nil {
		return nil, err
	}
	var mounts []Mount
	for _, l := range layers {
		for _, d := range []string{l.lower, l.upper, l.work, l.merged} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, fmt.Errorf("cache %s: %w", l.def.Name, err)
			}
		}
		if err := mountOverlay(l.lower, l.upper, l.work, l.merged); err != nil {
			if scratch != "" {
				// e.g. OpenZFS before 2.2, zfs-fuse: no RENAME_WHITEOUT.
				err = fmt.Errorf("%w (the layer is on the clone's disk-limited scratch %s, whose filesystem must be able to hold an overlay's upper dir)", err, scratch)
			}
			return nil, fmt.Errorf("cache %s: %w", l.def.Name, err)
		}
		mounts = append(mounts, Mount{Source: l.merged, Target: l.def.Target})
	}
	return mounts, nil
}

// closeCaches takes the run's layers down once every process of the run is
// gone and, when the run succeeded, merges what it added into each cache
// and evicts down to max_size. A run that failed, timed out or was
// cancelled merges nothing.
func closeCaches(dir, scratch string, layers []cacheLayer, succeeded bool, note func(string, ...any)) (err error) {
	if len(layers) == 0 {
		return nil
	}
	if err := unmountCaches(dir); err != nil {
		return err
	}
	// The layers are of no use once merged (or refused), and teardown and
	// Forget then find nothing to unmount. A layer left behind would hold
	// its bytes on the host's disk, so failing to remove one is an error.
	defer func() { err = errors.Join(err, removeLayers(dir, scratch)) }()
	if !succeeded {
		note("caches: the run did not succeed, nothing merged")
		return nil
	}
	for _, l := range layers {
		n, err := cache.Merge(l.upper, l.lower, l.def.Dir, l.def.MaxSize)
		if err != nil {
			return fmt.Errorf("merge into cache %s: %w", l.def.Name, err)
		}
		note("cache %s: %d new files merged", l.def.Name, n)
		if l.def.MaxSize > 0 {
			gone, err := cache.Evict(l.def.Dir, l.def.MaxSize)
			if err != nil {
				return fmt.Errorf("evict from cache %s: %w", l.def.Name, err)
			}
			if len(gone) > 0 {
				note("cache %s: %d least recently used files evicted (max_size %d bytes)", l.def.Name, len(gone), l.def.MaxSize)
			}
		}
	}
	return nil
}

// removeLayers removes what the run's cache layers left in dir and scratch.
func removeLayers(dir, scratch string) error {
	err := os.RemoveAll(filepath.Join(dir, "caches"))
	if scratch != "" {
		err = errors.Join(err, os.RemoveAll(filepath.Join(scratch, "caches")))
	}
	return err
}

// Package cache keeps the host-defined caches that jobs name (worker.toml
// [caches.NAME]): each run sees a cache through a layer of its own, and
// only after it succeeds are the plain files it added merged into the
// cache, by name, never replacing one that is there. See docs/caches.md.
package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/api"
)

// Def is one cache as the host's admin defined it.
type Def struct {
	Name string
	// Dir is the host directory; each owner and arch has its own tree
	// below it (Tree), so that a run never reads what another owner's
	// runs left, nor another arch's files.
	Dir string
	// Target is the absolute path the cache appears at in the sandbox.
	Target string
	// MaxSize bounds the bytes of all owners and arches together; 0:
	// unbounded.
	MaxSize int64
	// Shared makes one tree per arch for every owner: a run reads what
	// any other run added. Only for tools that verify what they read
	// (apt checks each .deb against its signed indexes).
	Shared bool
}

// LocalOwner is the owner of the runs of the host itself (kiln exec).
const LocalOwner = "local"

// ownersDir holds the trees of a cache that is not shared, one per owner.
const ownersDir = "owners"

// ValidOwner reports whether owner can name a tree of a cache: LocalOwner,
// or the opaque key a server sends (32 lowercase hex digits,
// api.CacheOwner). It is joined into a path, so nothing else is.
func ValidOwner(owner string) bool { return owner == LocalOwner || api.ValidCacheOwner(owner) }

// Tree is the tree of d that runs of owner and arch see:
// <dir>/owners/<owner>/<arch>, or <dir>/<arch> for a shared cache (the
// layout of every cache before caches had owners). arch must be a valid
// name (the image's arch); owner is checked here.
func (d Def) Tree(owner, arch string) (string, error) {
	if d.Shared {
		return filepath.Join(d.Dir, arch), nil
	}
	if !ValidOwner(owner) {
		return "", fmt.Errorf("cache %s is kept per owner, and the run's owner %.80q is not a valid owner key (a server too old to send one?)", d.Name, owner)
	}
	return filepath.Join(d.Dir, ownersDir, owner, arch), nil
}

// tmpPrefix names the files a merge is writing; readers of the cache never
// see them under a name a job would look for, and Evict removes leftovers
// of a merge that died.
const tmpPrefix = ".kiln-merge-"

// Merge adds to the cache tree dst every regular file of a run's layer src
// whose path does not exist in dst yet, and returns how many it added.
// Each file is written under a temporary name and linked into place, so a
// reader sees either no file or the whole file, and a name that exists
// (another run merged it first, or it was there) is never replaced.
// Anything that is not a plain file or directory (symlinks, devices,
// overlay whiteouts) is skipped, and so are names that would leave dst.
//
// With limit > 0 the merge never grows the cache whose top directory is
// top (every tree of it, dst among them) past limit bytes: before a file
// goes in, the least recently used files are evicted to make room for it,
// and a file larger than limit is skipped. (Merges of other runs at the
// same moment each keep to the bound they see.)
func Merge(src, dst, top string, limit int64) (added int, err error) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, err
	}
	var total int64
	if limit > 0 {
		files, err := Files(top)
		if err != nil {
			return 0, err
		}
		for _, f := range files {
			total += f.Size
		}
	}
	from, err := os.OpenRoot(src)
	if err != nil {
		return 0, fmt.Errorf("open layer: %w", err)
	}
	defer from.Close()
	to, err := os.OpenRoot(dst)
	if err != nil {
		return 0, fmt.Errorf("open cache: %w", err)
	}
	defer to.Close()
	err = fs.WalkDir(from.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		if !filepath.IsLocal(p) || strings.HasPrefix(e.Name(), tmpPrefix) {
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case e.IsDir():
			st, err := to.Lstat(p)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if err := to.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
					return err
				}
			case err != nil:
				return err
			case !st.IsDir():
				return fs.SkipDir // a file of the cache has that name
			}
			return nil
		case e.Type().IsRegular():
			var size int64
			if limit > 0 {
				info, err := e.Info()
				if err != nil {
					return err
				}
				size = info.Size()
				if size > limit {
					return nil
				}
				if total+size > limit {
					if _, total, err = evict(top, limit-size); err != nil {
						return err
					}
				}
			}
			ok, err := addFile(from, to, p, limit, size)
			if ok {
				added++
				total += size
			}
			return err
		}
		return nil
	})
	return added, err
}

// addFile copies from's regular file p to a temporary name in to and links
// it to p unless p exists; it reports whether it did. With limit > 0 it
// copies at most size bytes, the size the merge made room for.
func addFile(from, to *os.Root, p string, limit, size int64) (bool, error) {
	if _, err := to.Lstat(p); err == nil {
		return false, nil
	}
	in, err := from.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil || !st.Mode().IsRegular() {
		return false, err // swapped for something else since the walk
	}
	tmp := filepath.Join(filepath.Dir(p), tmpPrefix+strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+strconv.Itoa(os.Getpid()))
	out, err := to.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return false, err
	}
	defer func() { _ = to.Remove(tmp) }()
	var src io.Reader = in
	if limit > 0 {
		src = io.LimitReader(in, size)
	}
	_, err = io.Copy(out, src)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	// link(2) fails when p exists: the first run to merge a name wins and
	// the file a reader has is never replaced.
	if err := to.Link(tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// File is one file of a cache, as Evict weighs it.
type File struct {
	Path string
	Size int64
	Used time.Time // the later of its access and modification times
}

// Files lists the regular files below dir (all owners and arches),
// ignoring merges under way.
func Files(dir string) ([]File, error) {
	var out []File
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), tmpPrefix) {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return nil // gone meanwhile
		}
		out = append(out, File{Path: p, Size: info.Size(), Used: used(info)})
		return nil
	})
	return out, err
}

// Usage is the size of one tree of a cache.
type Usage struct {
	// Owner is the owner key of the tree, or "" for the tree every owner
	// shares (a shared cache's, or one left by a kiln before caches had
	// owners).
	Owner string
	Arch  string
	Bytes int64
	Files int
}

// Usages returns the usage of each tree of the cache in dir: the shared
// ones first by arch, then by owner and arch.
func Usages(dir string) ([]Usage, error) {
	var out []Usage
	arches := func(owner, d string) error {
		entries, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !e.IsDir() || (owner == "" && e.Name() == ownersDir) {
				continue
			}
			files, err := Files(filepath.Join(d, e.Name()))
			if err != nil {
				return err
			}
			u := Usage{Owner: owner, Arch: e.Name(), Files: len(files)}
			for _, f := range files {
				u.Bytes += f.Size
			}
			out = append(out, u)
		}
		return nil
	}
	if err := arches("", dir); err != nil {
		return nil, err
	}
	owners, err := os.ReadDir(filepath.Join(dir, ownersDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, o := range owners {
		if o.IsDir() {
			if err := arches(o.Name(), filepath.Join(dir, ownersDir, o.Name())); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// Evict removes the least recently used files of the cache in dir until
// it holds at most limit bytes (limit <= 0: everything), and returns what it
// removed. A run reading a file that goes keeps its open file; the next
// run fetches it again.
func Evict(dir string, limit int64) (removed []File, err error) {
	removed, _, err = evict(dir, limit)
	return removed, err
}

// evict is Evict, also returning the bytes left.
func evict(dir string, limit int64) (removed []File, left int64, err error) {
	files, err := Files(dir)
	if err != nil {
		return nil, 0, err
	}
	var total int64
	for _, f := range files {
		total += f.Size
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Used.Before(files[j].Used) })
	for _, f := range files {
		if total <= limit && limit > 0 {
			break
		}
		if err := os.Remove(f.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, total, err
		}
		total -= f.Size
		removed = append(removed, f)
	}
	return removed, total, nil
}

// used is the later of a file's access and modification times: a hit
// (read through a run's layer) counts as a use where the filesystem keeps
// atimes (relatime: at most once a day, enough for LRU).
func used(info fs.FileInfo) time.Time {
	t := info.ModTime()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		if a := atime(st); a.After(t) {
			return a
		}
	}
	return t
}

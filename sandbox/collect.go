package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// Artifact is one collected entry of /out.
type Artifact struct {
	Path   string // slash path relative to /out
	Size   int64
	Mode   fs.FileMode
	SHA256 string // regular files only
	Link   string // symlink target (stays inside /out)
}

// Collect copies what the job left in src (the host side of /out) into dst,
// keeping the entries that match globs (all when globs is empty; a glob
// matching a directory takes all of it).
//
// It never reads through a link the job made: the walk uses lstat, files
// are opened with O_NOFOLLOW, and a symlink is copied as a link only when
// its target stays inside /out; one that leaves (absolute, or ".." out) is
// skipped and reported through note. Devices, fifos and sockets are skipped
// too. It must only be called once every process of the sandbox is gone.
func Collect(src, dst string, globs []string, note func(format string, a ...any)) ([]Artifact, error) {
	if note == nil {
		note = func(string, ...any) {}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	var arts []Artifact
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !selected(rel, globs) {
			// A directory may still hold selected entries deeper down.
			return nil
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			return os.MkdirAll(target, 0o755)
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !linkStaysInside(rel, link) {
				note("artifact %s not collected: symlink to %q leaves /out", rel, link)
				return nil
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			arts = append(arts, Artifact{Path: rel, Mode: mode, Link: link})
		case mode.IsRegular():
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			a, err := copyNoFollow(p, target, mode.Perm())
			if err != nil {
				return fmt.Errorf("artifact %s: %w", rel, err)
			}
			a.Path = rel
			arts = append(arts, a)
		default:
			note("artifact %s not collected: %s is not a regular file, directory or link", rel, mode.Type())
		}
		return nil
	})
	if err != nil {
		return arts, fmt.Errorf("collect artifacts: %w", err)
	}
	return arts, nil
}

// selected: rel matches a glob itself, or lies below a matching directory.
func selected(rel string, globs []string) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		for p := rel; p != "." && p != "/"; p = path.Dir(p) {
			if ok, _ := path.Match(g, p); ok {
				return true
			}
		}
	}
	return false
}

// linkStaysInside resolves link lexically from the directory of rel and
// reports whether the result is still inside /out.
func linkStaysInside(rel, link string) bool {
	if link == "" || path.IsAbs(link) {
		return false
	}
	joined := path.Join(path.Dir(rel), link)
	return joined != ".." && !strings.HasPrefix(joined, "../")
}

func copyNoFollow(src, dst string, perm fs.FileMode) (Artifact, error) {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Artifact{}, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return Artifact{}, fmt.Errorf("not a regular file any more")
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return Artifact{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Size: n, Mode: perm, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

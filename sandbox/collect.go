package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Artifact is one collected entry of /out.
type Artifact struct {
	Path   string // slash path relative to /out
	Size   int64
	Mode   fs.FileMode
	SHA256 string // regular files only
	Link   string // symlink target (stays inside /out)
}

// ArtifactCap bounds what Collect takes from /out. A zero field sets no
// bound.
type ArtifactCap struct {
	Files int   // entries: files, links and directories
	Bytes int64 // the files' apparent sizes, summed
}

// ErrArtifactCap: /out holds more than the host's artifact cap allows.
var ErrArtifactCap = errors.New("artifact cap exceeded")

// maxLinkNotes bounds the console notes of one collection about dropped
// entries; the rest are counted in one last note.
const maxLinkNotes = 50

// maxLinkHops bounds the links followed while resolving one link (the
// kernel's own bound is 40).
const maxLinkHops = 40

// Collect copies what the job left in src (the host side of /out) into dst,
// keeping the entries that match globs (all when globs is empty; a glob
// matching a directory takes all of it). dst and the directories in it are
// made 0700: staged artifacts are for the host, not its other users.
//
// It never reads through a link the job made: the walk uses lstat, files
// are opened with O_NOFOLLOW, and a symlink is copied as a link only when
// its target, resolved against the real tree (links in it followed), stays
// inside /out and does not lead back to a directory holding it (a loop).
// Other links are dropped with a note. Devices, fifos and sockets are
// skipped too. Sparse files are copied sparse. Past cap, Collect stops
// with an error wrapping ErrArtifactCap; a file is refused by its size
// before any of it is read. It must only be called once every process of
// the sandbox is gone.
func Collect(src, dst string, globs []string, limit ArtifactCap, note func(format string, a ...any)) ([]Artifact, error) {
	if note == nil {
		note = func(string, ...any) {}
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return nil, err
	}
	var (
		arts    []Artifact
		entries int
		bytes   int64
		dropped int
	)
	drop := func(format string, a ...any) {
		dropped++
		if dropped <= maxLinkNotes {
			note(format, a...)
		}
	}
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
		entries++
		if limit.Files > 0 && entries > limit.Files {
			return fmt.Errorf("/out holds more than %d entries: %w ([limits] artifacts)", limit.Files, ErrArtifactCap)
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			return os.MkdirAll(target, 0o700)
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if why := checkLink(src, rel, link); why != "" {
				drop("artifact %s not collected: symlink to %q %s", rel, link, why)
				return nil
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			arts = append(arts, Artifact{Path: rel, Mode: mode, Link: link})
		case mode.IsRegular():
			if limit.Bytes > 0 && info.Size() > limit.Bytes-bytes {
				return fmt.Errorf("artifact %s: %d bytes would take /out past %d bytes: %w ([limits] artifact_bytes)",
					rel, info.Size(), limit.Bytes, ErrArtifactCap)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				return err
			}
			a, err := copyNoFollow(p, target, mode.Perm(), info.Size())
			if err != nil {
				return fmt.Errorf("artifact %s: %w", rel, err)
			}
			bytes += a.Size
			a.Path = rel
			arts = append(arts, a)
		default:
			drop("artifact %s not collected: %s is not a regular file, directory or link", rel, mode.Type())
		}
		return nil
	})
	if dropped > maxLinkNotes {
		note("%d more entries of /out not collected", dropped-maxLinkNotes)
	}
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

// checkLink resolves link, the target of the symlink at rel (a slash path
// below root), against the tree under root the way the kernel would,
// following the links it meets, and says why it may not be collected: it
// is absolute, it leaves root, it takes too many hops, or it resolves to a
// directory that holds the link (a loop that makes tools that follow
// links walk forever). "" means it may. A component that does not exist
// ends the real resolution; the rest is resolved lexically and must stay
// inside too.
func checkLink(root, rel, link string) string {
	if link == "" || path.IsAbs(link) {
		return "is absolute"
	}
	var cur []string // the resolved directory, as components below root
	if dir := path.Dir(rel); dir != "." {
		cur = strings.Split(dir, "/")
	}
	linkDir := append([]string(nil), cur...)
	pending := strings.Split(link, "/")
	hops, onDisk := 0, true
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "leaves /out"
			}
			cur = cur[:len(cur)-1]
			continue
		}
		if !onDisk {
			cur = append(cur, c)
			continue
		}
		p := filepath.Join(root, filepath.FromSlash(path.Join(append(cur, c)...)))
		fi, err := os.Lstat(p)
		switch {
		case err != nil:
			onDisk = false
			cur = append(cur, c)
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > maxLinkHops {
				return "takes too many links to resolve"
			}
			t, err := os.Readlink(p)
			if err != nil {
				return "cannot be read"
			}
			if path.IsAbs(t) {
				return "leads through an absolute link"
			}
			pending = append(strings.Split(t, "/"), pending...)
		default:
			cur = append(cur, c)
		}
	}
	if onDisk && isPrefix(cur, linkDir) {
		if fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(path.Join(cur...)))); err == nil && fi.IsDir() {
			return "loops back to a directory holding it"
		}
	}
	return ""
}

// isPrefix reports whether p is a (component-wise) prefix of s.
func isPrefix(p, s []string) bool {
	if len(p) > len(s) {
		return false
	}
	for i := range p {
		if p[i] != s[i] {
			return false
		}
	}
	return true
}

// copyNoFollow copies the regular file src to dst, keeping its holes: only
// the data regions (SEEK_DATA/SEEK_HOLE) are read and written, and the
// holes are hashed as the zeros they read as. size is the size the caller
// checked against the cap; a file that changed since is refused.
func copyNoFollow(src, dst string, perm fs.FileMode, size int64) (Artifact, error) {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Artifact{}, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return Artifact{}, errors.New("not a regular file any more")
	}
	if st.Size() != size {
		return Artifact{}, errors.New("changed while being collected")
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return Artifact{}, err
	}
	h := sha256.New()
	err = copySparse(out, in, size, h)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Size: size, Mode: perm, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// copySparse copies size bytes of in to out region by region, hashing all
// of them into h.
func copySparse(out, in *os.File, size int64, h hash.Hash) error {
	var off int64
	for off < size {
		data, err := in.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			data = size // only a hole is left
		} else if err != nil {
			// No SEEK_DATA here: copy it all.
			data = off
		}
		hashZeros(h, data-off)
		if data >= size {
			break
		}
		end, err := in.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		end = min(end, size)
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(in, end-data))
		if err != nil {
			return err
		}
		if n != end-data {
			return errors.New("changed while being collected")
		}
		off = end
	}
	return out.Truncate(size)
}

var zeros = make([]byte, 64<<10)

// hashZeros hashes n zero bytes (a hole) into h.
func hashZeros(h hash.Hash, n int64) {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		h.Write(zeros[:k]) // a hash.Hash never fails a write
		n -= k
	}
}

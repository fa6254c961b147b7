package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-build/kiln/errdefs"
)

// The fleet image format (docs/images.md): a root filesystem as one tar
// stream whose bytes depend only on the tree, so that the same tree packed
// on two hosts, or twice, has the same TarDigest. The rules:
//
//   - PAX format; entries depth first, the entries of each directory sorted
//     by name (bytewise), the root first as "./"; names relative ("bin/sh",
//     directories with a trailing "/");
//   - numeric owners only (no user or group names), the mode's permission
//     bits (setuid, setgid and sticky included), the mtime to the
//     nanosecond, no atime or ctime;
//   - extended attributes as SCHILY.xattr.<name>, sorted by name;
//   - a file linked more than once is written once, the later names as hard
//     links to the first name in this order;
//   - device nodes only under dev/; sockets are left out (they are made by
//     the process that listens, never by an image);
//   - zstd-compressed for transfer; the digest is of the uncompressed tar.

// PackStats sums up a packed tree.
type PackStats struct {
	// TarDigest is "sha256:<hex>" of the uncompressed tar, TarSize its length.
	TarDigest string
	TarSize   int64
	Files     int // entries written
}

// PackOptions tune Pack.
type PackOptions struct {
	// Progress, if set, is called now and then with the tar bytes
	// written so far, and once at the end.
	Progress func(tarBytes int64)
	// Level is the zstd level; zero is zstd.SpeedDefault.
	Level zstd.EncoderLevel
}

// Pack writes the tree at root to w as a deterministic tar (the rules
// above), zstd-compressed, and returns the uncompressed tar's digest and
// size. A device node outside dev/ is refused (errdefs.ErrInvalid, naming
// it), as is a file that changes size while it is read.
func Pack(ctx context.Context, root string, w io.Writer, opts PackOptions) (PackStats, error) {
	level := opts.Level
	if level == 0 {
		level = zstd.SpeedDefault
	}
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(level))
	if err != nil {
		return PackStats{}, err
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(zw, h), progress: opts.Progress}
	st, err := PackTar(ctx, root, cw)
	if err != nil {
		zw.Close()
		return PackStats{}, err
	}
	if err := zw.Close(); err != nil {
		return PackStats{}, fmt.Errorf("zstd: %w", err)
	}
	if opts.Progress != nil {
		opts.Progress(cw.n)
	}
	st.TarSize = cw.n
	st.TarDigest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return st, nil
}

// PackTar writes the uncompressed deterministic tar of root to w; its
// result has Files only (Pack adds the digest and size).
func PackTar(ctx context.Context, root string, w io.Writer) (PackStats, error) {
	p := &packer{root: root, tw: tar.NewWriter(w), links: map[fileID]string{}, buf: make([]byte, 1<<20)}
	if err := p.dir(ctx, "."); err != nil {
		return PackStats{}, err
	}
	if err := p.tw.Close(); err != nil {
		return PackStats{}, fmt.Errorf("write tar: %w", err)
	}
	return PackStats{Files: p.files}, nil
}

type fileID struct{ dev, ino uint64 }

type packer struct {
	root  string
	tw    *tar.Writer
	links map[fileID]string // first name of each file with more than one link
	files int
	buf   []byte
}

// dir writes rel (a directory) and everything below it.
func (p *packer) dir(ctx context.Context, rel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.entry(rel); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(p.root, rel))
	if err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	// ReadDir sorts too; the format must not depend on it.
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	for _, e := range ents {
		child := path.Join(rel, e.Name())
		if e.IsDir() {
			err = p.dir(ctx, child)
		} else {
			err = p.entry(child)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// entry writes one name (not what is below a directory).
func (p *packer) entry(rel string) error {
	full := filepath.Join(p.root, rel)
	fi, err := os.Lstat(full)
	if err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	info, err := statOf(fi)
	if err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	hdr := &tar.Header{
		Format:  tar.FormatPAX,
		Name:    rel,
		Mode:    int64(fi.Mode().Perm()) | info.special,
		Uid:     info.uid,
		Gid:     info.gid,
		ModTime: info.mtime,
	}
	if rel == "." {
		hdr.Name = "./"
	}
	switch m := fi.Mode(); {
	case m.IsDir():
		hdr.Typeflag = tar.TypeDir
		if rel != "." {
			hdr.Name += "/"
		}
	case m.IsRegular():
		if info.nlink > 1 {
			id := fileID{info.dev, info.ino}
			if first, ok := p.links[id]; ok {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				hdr.ModTime = time.Time{}
				hdr.Mode, hdr.Uid, hdr.Gid = 0, 0, 0
				return p.write(hdr, rel, nil)
			}
			p.links[id] = rel
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
	case m&fs.ModeSymlink != 0:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("pack %s: %w", rel, err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case m&fs.ModeNamedPipe != 0:
		hdr.Typeflag = tar.TypeFifo
	case m&fs.ModeDevice != 0:
		if !underDev(rel) {
			return fmt.Errorf("pack %s: a device node outside dev/ refused: %w", rel, errdefs.ErrInvalid)
		}
		hdr.Typeflag = tar.TypeBlock
		if m&fs.ModeCharDevice != 0 {
			hdr.Typeflag = tar.TypeChar
		}
		hdr.Devmajor, hdr.Devminor = info.major, info.minor
	case m&fs.ModeSocket != 0:
		return nil
	default:
		return fmt.Errorf("pack %s: unsupported file type %v: %w", rel, m.Type(), errdefs.ErrInvalid)
	}
	xa, err := listXattrs(full)
	if err != nil {
		return fmt.Errorf("pack %s: xattrs: %w", rel, err)
	}
	if len(xa) > 0 {
		hdr.PAXRecords = map[string]string{}
		for k, v := range xa {
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	var content *os.File
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		content, err = os.Open(full)
		if err != nil {
			return fmt.Errorf("pack %s: %w", rel, err)
		}
		defer content.Close()
	}
	return p.write(hdr, rel, content)
}

func (p *packer) write(hdr *tar.Header, rel string, content *os.File) error {
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	p.files++
	if content == nil {
		return nil
	}
	n, err := io.CopyBuffer(p.tw, io.LimitReader(content, hdr.Size), p.buf)
	if err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("pack %s: the file shrank while it was read (%d of %d bytes): %w", rel, n, hdr.Size, errdefs.ErrBusy)
	}
	return nil
}

// underDev reports whether a relative name is below dev/, where device
// nodes belong.
func underDev(rel string) bool { return strings.HasPrefix(rel, "dev/") }

// statInfo is what Pack needs of a stat beyond fs.FileInfo.
type statInfo struct {
	uid, gid     int
	special      int64 // setuid, setgid, sticky as tar mode bits
	mtime        time.Time
	nlink        uint64
	dev, ino     uint64
	major, minor int64
}

// countWriter counts what passes and reports it now and then.
type countWriter struct {
	w        io.Writer
	n, tick  int64
	progress func(int64)
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	if c.progress != nil && c.n-c.tick >= progressStep {
		c.tick = c.n
		c.progress(c.n)
	}
	return n, err
}

// specialBits are m's setuid, setgid and sticky bits as tar's mode bits.
func specialBits(m fs.FileMode) int64 {
	var b int64
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
)

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Progress, if set, is called now and then with the total number of
	// file content bytes written so far, and once at the end.
	Progress func(written int64)
	// DevicesUnderDev refuses a device node anywhere but below dev/ (the
	// fleet image format, docs/images.md).
	DevicesUnderDev bool
	// Read, if set (ExtractFile only), is called as the tarball file is
	// read with the bytes read so far: the progress of a file whose size
	// is known, compressed or not.
	Read func(read int64)
}

// countingReader calls report with the bytes read so far, at most every
// progressStep/8 bytes and at EOF.
type countingReader struct {
	r      io.Reader
	n, at  int64
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n-c.at >= progressStep/8 || err == io.EOF {
		c.at = c.n
		c.report(c.n)
	}
	return n, err
}

// ExtractStats sums up an extraction.
type ExtractStats struct {
	Entries int
	Bytes   int64 // file content bytes written
}

// progressStep is how many bytes pass between two Progress calls.
const progressStep = 8 << 20

// ExtractFile extracts the tarball at file into dir, sniffing its
// compression (none, gzip, xz, zstd) from the magic bytes rather than the
// name, since dist sets and rootfs tarballs are named inconsistently.
//
// xz goes through the xz(1) binary, which is part of FreeBSD's base and of
// every Debian host that has dpkg, and is several times faster than a
// pure-Go decoder on a 200 MB base set; zstd and gzip are decoded in-process
// (klauspost/compress is already in kiln's module graph through containerd).
func ExtractFile(ctx context.Context, file, dir string, opts ExtractOptions) (ExtractStats, error) {
	f, err := os.Open(file)
	if err != nil {
		return ExtractStats{}, fmt.Errorf("open tarball: %w", err)
	}
	defer f.Close()
	var in io.Reader = f
	if opts.Read != nil {
		in = &countingReader{r: f, report: opts.Read}
	}
	br := bufio.NewReaderSize(in, 1<<16)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return ExtractStats{}, fmt.Errorf("%s: gzip: %w", file, err)
		}
		defer zr.Close()
		return Extract(ctx, zr, dir, opts)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return ExtractStats{}, fmt.Errorf("%s: zstd: %w", file, err)
		}
		defer zr.Close()
		return Extract(ctx, zr, dir, opts)
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return extractVia(ctx, []string{"xz", "-dc"}, br, dir, opts)
	default:
		return Extract(ctx, br, dir, opts)
	}
}

// extractVia decompresses r through an external filter.
func extractVia(ctx context.Context, argv []string, r io.Reader, dir string, opts ExtractOptions) (ExtractStats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return ExtractStats{}, err
	}
	if err := cmd.Start(); err != nil {
		return ExtractStats{}, fmt.Errorf("start %s: %w", argv[0], err)
	}
	st, xerr := Extract(ctx, out, dir, opts)
	if xerr != nil {
		cancel() // stop the filter; its error is not the interesting one
		_ = cmd.Wait()
		return st, xerr
	}
	// Drain trailing padding so the filter does not die of SIGPIPE.
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return st, fmt.Errorf("%s: %w: %s", argv[0], err, strings.TrimSpace(stderr.String()))
	}
	return st, nil
}

// Extract unpacks the uncompressed tar stream r into dir, as a root
// filesystem needs it: owners, modes (setuid included), mtimes, device
// nodes, fifos, hard and symbolic links, and SCHILY.xattr.* attributes.
//
// It refuses (with an error wrapping errdefs.ErrInvalid, and stops) every
// entry that could land outside dir: absolute names, ".." components, and
// names whose parent path runs through a symlink - the archive may have
// made that symlink itself a few entries earlier. Each parent component is
// opened with O_NOFOLLOW relative to the previous one, so no symlink is ever
// followed, whether it came from the archive or was in dir before. Hard
// links must name an entry inside dir by the same rules.
//
// ctx is checked between entries. A failed extraction leaves what it wrote
// so far; callers extract into a build area that they throw away.
func Extract(ctx context.Context, r io.Reader, dir string, opts ExtractOptions) (ExtractStats, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return ExtractStats{}, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(root)
	x := &extractor{root: root, opts: opts}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return x.stats, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if x.last != "" {
				return x.stats, fmt.Errorf("read tar after entry %q: %w", x.last, err)
			}
			return x.stats, fmt.Errorf("read tar: %w", err)
		}
		x.last = hdr.Name
		if err := x.entry(hdr, tr); err != nil {
			return x.stats, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		x.stats.Entries++
	}
	// Directory times last: creating their children changed them.
	for i := len(x.dirs) - 1; i >= 0; i-- {
		if err := x.finishDir(x.dirs[i]); err != nil {
			return x.stats, fmt.Errorf("tar entry %q: %w", x.dirs[i].Name, err)
		}
	}
	if opts.Progress != nil {
		opts.Progress(x.stats.Bytes)
	}
	return x.stats, nil
}

type extractor struct {
	root     int
	opts     ExtractOptions
	stats    ExtractStats
	dirs     []*tar.Header
	lastTick int64
	last     string // the name of the last entry read, for errors
}

// cleanName validates an archive path and returns it relative to the root
// ("." for the root itself).
func cleanName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("empty name: %w", errdefs.ErrInvalid)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute path refused: %w", errdefs.ErrInvalid)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("path with .. refused: %w", errdefs.ErrInvalid)
		}
	}
	return path.Clean(name), nil
}

// openParent walks every directory component of rel below the root without
// following symlinks, creating missing ones (0755, like tar), and returns a
// descriptor of the parent directory and the final component. Close the fd.
func (x *extractor) openParent(rel string, create bool) (int, string, error) {
	parts := strings.Split(rel, "/")
	fd, err := unix.Dup(x.root)
	if err != nil {
		return -1, "", err
	}
	for _, c := range parts[:len(parts)-1] {
		if c == "." || c == "" {
			continue
		}
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EMLINK) {
				return -1, "", fmt.Errorf("parent %q is a symlink or not a directory, refused: %w", c, errdefs.ErrInvalid)
			}
			return -1, "", fmt.Errorf("open parent %q: %w", c, err)
		}
		unix.Close(fd)
		fd = next
	}
	return fd, parts[len(parts)-1], nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "." {
		if hdr.Typeflag == tar.TypeDir {
			x.dirs = append(x.dirs, hdr)
		}
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeSymlink, tar.TypeLink:
	default:
		return fmt.Errorf("unsupported entry type %q: %w", hdr.Typeflag, errdefs.ErrInvalid)
	}
	if x.opts.DevicesUnderDev && (hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock) && !underDev(rel) {
		return fmt.Errorf("a device node outside dev/ refused: %w", errdefs.ErrInvalid)
	}
	dfd, base, err := x.openParent(rel, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)

	if hdr.Typeflag == tar.TypeDir {
		var st unix.Stat_t
		err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Unlinkat(dfd, base, 0); err != nil {
				return err
			}
			err = unix.ENOENT
		}
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(dfd, base, 0o700); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		x.dirs = append(x.dirs, hdr)
		return nil
	}

	// Replace, never write through, whatever is there (a symlink planted
	// earlier must not redirect this entry).
	if err := unix.Unlinkat(dfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM) {
			return fmt.Errorf("a directory is in the way: %w", errdefs.ErrInvalid)
		}
		return err
	}

	switch hdr.Typeflag {
	case tar.TypeReg:
		return x.file(dfd, base, hdr, r)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, dfd, base); err != nil {
			return err
		}
		if err := unix.Fchownat(dfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		return setTimes(dfd, base, hdr)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		if target == "." {
			return fmt.Errorf("hard link to the root: %w", errdefs.ErrInvalid)
		}
		sfd, sbase, err := x.openParent(target, false)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(sfd)
		// No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
		if err := unix.Linkat(sfd, sbase, dfd, base, 0); err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}
		return nil
	default: // char, block, fifo
		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		//nolint:gosec // G115: Linux device numbers are 32-bit; a larger one in a tarball is truncated, as tar(1) does
		if err := mknodat(dfd, base, mode, uint32(hdr.Devmajor), uint32(hdr.Devminor)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		if err := unix.Fchownat(dfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		// mknod's mode went through the umask.
		if err := unix.Fchmodat(dfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		return setTimes(dfd, base, hdr)
	}
}

func (x *extractor) file(dfd int, base string, hdr *tar.Header, r io.Reader) error {
	fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	buf := make([]byte, 1<<16)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return err
			}
			x.stats.Bytes += int64(n)
			if x.opts.Progress != nil && x.stats.Bytes-x.lastTick >= progressStep {
				x.lastTick = x.stats.Bytes
				x.opts.Progress(x.stats.Bytes)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := setXattrsOwnerMode(fd, hdr); err != nil {
		return err
	}
	if err := setTimes(dfd, base, hdr); err != nil {
		return err
	}
	return f.Close()
}

// setXattrsOwnerMode gives the open file or directory fd hdr's xattrs,
// owner and mode, in that order: chown clears setuid/setgid bits, so the
// mode comes after it.
func setXattrsOwnerMode(fd int, hdr *tar.Header) error {
	if err := setXattrs(fd, hdr); err != nil {
		return err
	}
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// finishDir applies a directory's owner, mode, xattrs and mtime.
func (x *extractor) finishDir(hdr *tar.Header) error {
	rel, _ := cleanName(hdr.Name)
	var fd int
	var err error
	if rel == "." {
		fd, err = unix.Dup(x.root)
	} else {
		dfd, base, perr := x.openParent(rel, false)
		if perr != nil {
			return perr
		}
		fd, err = unix.Openat(dfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(dfd)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := setXattrsOwnerMode(fd, hdr); err != nil {
		return err
	}
	mt := hdr.ModTime
	at := hdr.AccessTime
	if at.IsZero() {
		at = mt
	}
	return unix.Futimes(fd, []unix.Timeval{unix.NsecToTimeval(at.UnixNano()), unix.NsecToTimeval(mt.UnixNano())})
}

// setTimes sets the times of a name without following it.
func setTimes(dfd int, base string, hdr *tar.Header) error {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// xattrs returns the extended attributes recorded in hdr's PAX records.
func xattrs(hdr *tar.Header) map[string]string {
	var m map[string]string
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if m == nil {
				m = map[string]string{}
			}
			m[name] = v
		}
	}
	return m
}

package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// makeTree makes a small root filesystem with every kind of entry the
// format keeps, creating the names in the order given (so that two calls
// with different orders give trees whose directories list differently on
// disk).
func makeTree(t *testing.T, dir string, order []string) {
	t.Helper()
	mt := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	mk := map[string]func(p string) error{
		"bin/busybox": func(p string) error { return os.WriteFile(p, []byte("#!busybox\n"), 0o755) },
		"bin/sh":      func(p string) error { return os.Symlink("/bin/busybox", p) },
		"bin/ls": func(p string) error {
			return os.Link(filepath.Join(filepath.Dir(p), "busybox"), p)
		},
		"etc/passwd": func(p string) error { return os.WriteFile(p, []byte("root:x:0:0::/root:/bin/sh\n"), 0o644) },
		"usr/bin/su": func(p string) error {
			if err := os.WriteFile(p, []byte("su"), 0o755); err != nil {
				return err
			}
			if err := os.Chown(p, 0, 0); err != nil {
				return err
			}
			return os.Chmod(p, 0o4755|os.ModeSetuid)
		},
		"home/u/f": func(p string) error {
			if err := os.WriteFile(p, []byte("u's"), 0o600); err != nil {
				return err
			}
			if err := os.Lchown(p, 1000, 1000); err != nil {
				return err
			}
			return unix.Lsetxattr(p, "user.kiln", []byte("v"), 0)
		},
		"dev/null": func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) },
		"run/fifo": func(p string) error { return unix.Mkfifo(p, 0o600) },
		"tmp/":     func(p string) error { return os.Chmod(p, 0o1777|os.ModeSticky) },
	}
	for _, n := range order {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(n, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := mk[n](p); err != nil {
			t.Fatalf("make %s: %v", n, err)
		}
	}
	// Times last: making children changed their directories'.
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.Lutimes(p, []unix.Timeval{unix.NsecToTimeval(mt.UnixNano()), unix.NsecToTimeval(mt.UnixNano())})
	})
	if err != nil {
		t.Fatal(err)
	}
}

var treeOrder = []string{"bin/busybox", "bin/sh", "bin/ls", "etc/passwd", "usr/bin/su", "home/u/f", "dev/null", "run/fifo", "tmp/"}

func pack(t *testing.T, dir string) ([]byte, images.PackStats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := images.Pack(context.Background(), dir, &buf, images.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), st
}

func TestPackIsDeterministic(t *testing.T) {
	testsupport.NeedRoot(t)
	a, b := t.TempDir(), t.TempDir()
	makeTree(t, a, treeOrder)
	// Made in another order (bin/ls links bin/busybox: it comes after).
	rev := []string{"tmp/", "run/fifo", "dev/null", "home/u/f", "usr/bin/su", "etc/passwd", "bin/sh", "bin/busybox", "bin/ls"}
	makeTree(t, b, rev)
	za, sa := pack(t, a)
	_, sb := pack(t, b)
	if sa.TarDigest != sb.TarDigest || sa.TarSize != sb.TarSize {
		t.Fatalf("same tree, made in another order, packed differently:\n%+v\n%+v", sa, sb)
	}
	_, sa2 := pack(t, a)
	if sa2 != sa {
		t.Fatalf("the same tree packed twice differs: %+v, %+v", sa, sa2)
	}
	// The digest is the uncompressed tar's.
	zr, err := zstd.NewReader(bytes.NewReader(za))
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw.Bytes())
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != sa.TarDigest || int64(raw.Len()) != sa.TarSize {
		t.Fatalf("digest %s size %d, the tar is %s size %d", sa.TarDigest, sa.TarSize, got, raw.Len())
	}
	// The format's rules, entry by entry.
	tr := tar.NewReader(bytes.NewReader(raw.Bytes()))
	var order []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		order = append(order, h.Name)
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner names %q/%q, want numeric only", h.Name, h.Uname, h.Gname)
		}
		switch h.Name {
		case "bin/ls":
			if h.Typeflag != tar.TypeLink || h.Linkname != "bin/busybox" {
				t.Errorf("bin/ls: %c %q, want a hard link to bin/busybox", h.Typeflag, h.Linkname)
			}
		case "home/u/f":
			if h.Uid != 1000 || h.PAXRecords["SCHILY.xattr.user.kiln"] != "v" {
				t.Errorf("home/u/f: uid %d xattrs %v", h.Uid, h.PAXRecords)
			}
		case "usr/bin/su":
			if h.Mode != 0o4755 {
				t.Errorf("usr/bin/su mode %o, want 4755", h.Mode)
			}
		case "dev/null":
			if h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
				t.Errorf("dev/null: %c %d,%d", h.Typeflag, h.Devmajor, h.Devminor)
			}
		}
	}
	want := []string{"./", "bin/", "bin/busybox", "bin/ls", "bin/sh", "dev/", "dev/null", "etc/", "etc/passwd",
		"home/", "home/u/", "home/u/f", "run/", "run/fifo", "tmp/", "usr/", "usr/bin/", "usr/bin/su"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Fatalf("entries\n%v\nwant\n%v", order, want)
	}
}

func TestPackUnpackRoundTrip(t *testing.T) {
	testsupport.NeedRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	makeTree(t, src, treeOrder)
	z, st := pack(t, src)
	ust, err := images.Unpack(context.Background(), bytes.NewReader(z), dst, images.Expect{TarDigest: st.TarDigest, TarSize: st.TarSize}, images.ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ust.TarBytes != st.TarSize {
		t.Fatalf("read %d tar bytes, packed %d", ust.TarBytes, st.TarSize)
	}
	// Packing the unpacked tree gives the same digest: nothing was lost.
	_, st2 := pack(t, dst)
	if st2.TarDigest != st.TarDigest {
		t.Fatalf("round trip changed the tree: %s -> %s", st.TarDigest, st2.TarDigest)
	}
}

func TestPackRefusesDeviceOutsideDev(t *testing.T) {
	testsupport.NeedRoot(t)
	dir := t.TempDir()
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	_, err := images.Pack(context.Background(), dir, &bytes.Buffer{}, images.PackOptions{})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "null") {
		t.Fatalf("err = %v, want ErrInvalid naming null", err)
	}
}

// zstdTar compresses a tar and returns it with its honest Expect.
func zstdTar(t *testing.T, raw []byte) ([]byte, images.Expect) {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return buf.Bytes(), images.Expect{TarDigest: "sha256:" + hex.EncodeToString(sum[:]), TarSize: int64(len(raw))}
}

func TestUnpackRefusesHostileStreams(t *testing.T) {
	testsupport.NeedRoot(t)
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg} }
	good := tarball(t, []*tar.Header{{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, reg("a"), reg("b")},
		map[string]string{"a": "aaaa", "b": strings.Repeat("b", 3000)})
	for _, tc := range []struct {
		name string
		// stream returns the compressed stream and the manifest's promise.
		stream func(t *testing.T) ([]byte, images.Expect)
		want   string // in the error
	}{
		{"absolute name", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{reg("/etc/passwd")}, nil))
		}, `"/etc/passwd"`},
		{"dotdot", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{reg("a/../../x")}, nil))
		}, `"a/../../x"`},
		{"through a symlink", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{
				{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, reg("l/shadow")}, nil))
		}, `"l/shadow"`},
		{"hard link out of the tree", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"}}, nil))
		}, `"h"`},
		{"char device outside dev", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{{Name: "usr/mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1}}, nil))
		}, `"usr/mem"`},
		{"block device outside dev", func(t *testing.T) ([]byte, images.Expect) {
			return zstdTar(t, tarball(t, []*tar.Header{{Name: "devx/sda", Typeflag: tar.TypeBlock, Devmajor: 8}}, nil))
		}, `"devx/sda"`},
		{"more bytes than the manifest", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			e.TarSize = 2048 // ends inside b's content
			return z, e
		}, `"b"`},
		{"fewer bytes than the manifest", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			e.TarSize += 512
			return z, e
		}, "manifest says"},
		{"digest mismatch", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			e.TarDigest = "sha256:" + strings.Repeat("0", 64)
			return z, e
		}, "the tree was discarded"},
		{"not zstd", func(t *testing.T) ([]byte, images.Expect) {
			_, e := zstdTar(t, good)
			return good, e
		}, "read tar"},
		{"truncated stream", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			return z[:len(z)/2], e
		}, ""},
		{"bad digest in the manifest", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			e.TarDigest = "sha256:ABC"
			return z, e
		}, "tar digest"},
		{"absurd size in the manifest", func(t *testing.T) ([]byte, images.Expect) {
			z, e := zstdTar(t, good)
			e.TarSize = -512
			return z, e
		}, "tar size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outside := t.TempDir()
			dir := filepath.Join(t.TempDir(), "root")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			z, e := tc.stream(t)
			_, err := images.Unpack(context.Background(), bytes.NewReader(z), dir, e, images.ExtractOptions{})
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %s", err, tc.want)
			}
			if left := listTree(t, dir); len(left) != 1 {
				t.Fatalf("a refused stream left %v", left)
			}
			if left := listTree(t, outside); len(left) != 1 {
				t.Fatalf("outside the tree: %v", left)
			}
		})
	}
	t.Run("honest stream", func(t *testing.T) {
		dir := t.TempDir()
		z, e := zstdTar(t, good)
		if _, err := images.Unpack(context.Background(), bytes.NewReader(z), dir, e, images.ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "b")); err != nil || len(b) != 3000 {
			t.Fatalf("b: %d bytes, %v", len(b), err)
		}
	})
	t.Run("not empty", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "keep"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		z, e := zstdTar(t, good)
		if _, err := images.Unpack(context.Background(), bytes.NewReader(z), dir, e, images.ExtractOptions{}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "keep")); err != nil {
			t.Fatalf("what was there was touched: %v", err)
		}
	})
}

package images_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
)

func tarball(t testing.TB, hdrs []*tar.Header, bodies map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		body := bodies[h.Name]
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if body != "" && h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// listTree returns every path under dir, relative, sorted.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestExtractRefusesHostileTarballs(t *testing.T) {
	testsupport.NeedRoot(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// hdrs gets the absolute path of a directory outside the target.
		hdrs func(outside string) []*tar.Header
	}{
		{"dotdot", func(string) []*tar.Header {
			return []*tar.Header{{Name: "../outside/x", Typeflag: tar.TypeReg}}
		}},
		{"dotdot in the middle", func(string) []*tar.Header {
			return []*tar.Header{{Name: "a/../../outside/x", Typeflag: tar.TypeReg}}
		}},
		{"absolute", func(outside string) []*tar.Header {
			return []*tar.Header{{Name: outside + "/x", Typeflag: tar.TypeReg}}
		}},
		{"symlink to / then a file through it", func(outside string) []*tar.Header {
			return []*tar.Header{
				{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"},
				{Name: "l" + outside + "/x", Typeflag: tar.TypeReg},
			}
		}},
		{"relative symlink out then a file through it", func(string) []*tar.Header {
			return []*tar.Header{
				{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"},
				{Name: "l/x", Typeflag: tar.TypeReg},
			}
		}},
		{"symlink chain", func(string) []*tar.Header {
			return []*tar.Header{
				{Name: "d", Typeflag: tar.TypeDir, Mode: 0o755},
				{Name: "d/b", Typeflag: tar.TypeSymlink, Linkname: "../.."},
				{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "d/b"},
				{Name: "a/outside/x", Typeflag: tar.TypeReg},
			}
		}},
		{"directory entry through a symlink", func(string) []*tar.Header {
			return []*tar.Header{
				{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"},
				{Name: "l/sub/", Typeflag: tar.TypeDir, Mode: 0o755},
			}
		}},
		{"hardlink to outside", func(string) []*tar.Header {
			return []*tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../outside/secret"}}
		}},
		{"hardlink to absolute", func(outside string) []*tar.Header {
			return []*tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: outside + "/secret"}}
		}},
		{"hardlink through a symlink", func(string) []*tar.Header {
			return []*tar.Header{
				{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../outside"},
				{Name: "h", Typeflag: tar.TypeLink, Linkname: "l/secret"},
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			target := filepath.Join(tmp, "target")
			outside := filepath.Join(tmp, "outside")
			for _, d := range []string{target, outside} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
				t.Fatal(err)
			}
			data := tarball(t, tc.hdrs(outside), map[string]string{})
			_, err := images.Extract(ctx, bytes.NewReader(data), target, images.ExtractOptions{})
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("Extract: got %v, want an error wrapping ErrInvalid", err)
			}
			if got := listTree(t, outside); len(got) != 2 || got[1] != "secret" {
				t.Errorf("outside dir changed: %v", got)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(outside, "secret"), &st); err != nil || st.Nlink != 1 {
				t.Errorf("outside/secret got a hard link (nlink %d, err %v)", st.Nlink, err)
			}
			for _, p := range listTree(t, tmp) {
				if p != "." && p != "outside" && p != "outside/secret" && !isUnder(p, "target") {
					t.Errorf("written outside the target: %s", p)
				}
			}
		})
	}
}

func isUnder(p, dir string) bool { return p == dir || len(p) > len(dir) && p[:len(dir)+1] == dir+"/" }

func TestExtractRoundTrip(t *testing.T) {
	testsupport.NeedRoot(t)
	ctx := context.Background()
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	hdrs := []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime},
		{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: mtime},
		{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: mtime},
		{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: mtime,
			PAXRecords: map[string]string{"SCHILY.xattr.user.kiln": "hello"}, Format: tar.FormatPAX},
		{Name: "home/u/file", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1234, Gid: 1234, ModTime: mtime},
		{Name: "home/u", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1234, Gid: 1234, ModTime: mtime},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "su", ModTime: mtime},
		{Name: "bin/su2", Typeflag: tar.TypeLink, Linkname: "bin/su"},
	}
	data := tarball(t, hdrs, map[string]string{"bin/su": "#!su\n", "bin/ping": "ping", "home/u/file": "data"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()
	file := filepath.Join(t.TempDir(), "root.tar.gz")
	if err := os.WriteFile(file, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	var progress int64
	st, err := images.ExtractFile(ctx, file, target, images.ExtractOptions{Progress: func(n int64) { progress = n }})
	if err != nil {
		t.Fatalf("ExtractFile: %v", err)
	}
	if want := int64(len("#!su\n") + len("ping") + len("data")); st.Bytes != want || progress != want {
		t.Errorf("bytes: stats %d, progress %d, want %d", st.Bytes, progress, want)
	}

	stat := func(rel string) *unix.Stat_t {
		var s unix.Stat_t
		if err := unix.Lstat(filepath.Join(target, rel), &s); err != nil {
			t.Fatalf("lstat %s: %v", rel, err)
		}
		return &s
	}
	for _, c := range []struct {
		rel      string
		mode     uint32 // type and permission bits
		uid, gid uint32
	}{
		{".", unix.S_IFDIR | 0o755, 0, 0},
		{"dev/null", unix.S_IFCHR | 0o666, 0, 0},
		{"dev/fifo", unix.S_IFIFO | 0o600, 0, 0},
		{"bin/su", unix.S_IFREG | 0o4755, 0, 0},
		{"home/u", unix.S_IFDIR | 0o750, 1234, 1234},
		{"home/u/file", unix.S_IFREG | 0o640, 1234, 1234},
		{"bin/sh", unix.S_IFLNK | 0o777, 0, 0},
	} {
		t.Run(c.rel, func(t *testing.T) {
			s := stat(c.rel)
			if s.Mode != c.mode || s.Uid != c.uid || s.Gid != c.gid {
				t.Errorf("mode %o uid %d gid %d, want %o %d %d", s.Mode, s.Uid, s.Gid, c.mode, c.uid, c.gid)
			}
			if got := time.Unix(s.Mtim.Unix()); !got.Equal(mtime) {
				t.Errorf("mtime %v, want %v", got, mtime)
			}
		})
	}
	if s := stat("dev/null"); unix.Major(uint64(s.Rdev)) != 1 || unix.Minor(uint64(s.Rdev)) != 3 {
		t.Errorf("dev/null is %d:%d, want 1:3", unix.Major(uint64(s.Rdev)), unix.Minor(uint64(s.Rdev)))
	}
	if su, su2 := stat("bin/su"), stat("bin/su2"); su.Ino != su2.Ino || su.Nlink != 2 {
		t.Errorf("bin/su2 is not a hard link of bin/su")
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Join(target, "bin/ping"), "user.kiln", buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Errorf("xattr user.kiln = %q, %v; want hello", buf[:n], err)
	}
}

func TestExtractFileCompressions(t *testing.T) {
	testsupport.NeedRoot(t)
	ctx := context.Background()
	data := tarball(t, []*tar.Header{{Name: "etc/os-release", Typeflag: tar.TypeReg, ModTime: time.Unix(1e9, 0)}},
		map[string]string{"etc/os-release": "ID=kiln\n"})
	for _, c := range []struct {
		name string
		cmd  []string // compressor reading stdin, writing stdout; nil = none
	}{
		{"plain", nil},
		{"gzip", []string{"gzip", "-c"}},
		{"xz", []string{"xz", "-c"}},
		{"zstd", []string{"zstd", "-c", "-q"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := data
			if c.cmd != nil {
				testsupport.NeedCommand(t, c.cmd[0])
				cmd := exec.Command(c.cmd[0], c.cmd[1:]...)
				cmd.Stdin = bytes.NewReader(data)
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("%v: %v", c.cmd, err)
				}
				in = out
			}
			dir := t.TempDir()
			file := filepath.Join(dir, "x.tar.whatever")
			if err := os.WriteFile(file, in, 0o644); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(dir, "root")
			os.Mkdir(target, 0o755)
			if _, err := images.ExtractFile(ctx, file, target, images.ExtractOptions{}); err != nil {
				t.Fatalf("ExtractFile: %v", err)
			}
			got, err := os.ReadFile(filepath.Join(target, "etc/os-release"))
			if err != nil || string(got) != "ID=kiln\n" {
				t.Errorf("etc/os-release = %q, %v", got, err)
			}
		})
	}
}

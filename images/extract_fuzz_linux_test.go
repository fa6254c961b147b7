package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// FuzzExtract: an image tarball comes from wherever an admin pointed
// `kiln image create` at. Extracted into a directory, no tarball may
// create, change, chmod, chown or retime anything outside it: not beside
// it (relative "..", hard links, symlinked parents) nor anywhere else
// (absolute names and symlinks), and it never panics.
func FuzzExtract(f *testing.F) {
	testsupport.NeedRoot(f)
	base := f.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		f.Fatal(err)
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host data\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o4777} }
	sym := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: to}
	}
	hard := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: to}
	}
	body := map[string]string{}
	for _, n := range []string{"etc/passwd", "../outside/secret", secret, "up/secret", "abs/secret", "x/outside/secret", "l"} {
		body[n] = "pwned\n"
	}
	for _, hdrs := range [][]*tar.Header{
		{dir("etc"), reg("etc/passwd"), sym("bin", "usr/bin")},
		{reg("../outside/secret")},
		{reg(secret)},
		{sym("up", "../outside"), reg("up/secret")},
		{sym("abs", outside), reg("abs/secret"), dir("abs")},
		{sym("l", secret), reg("l")},
		{hard("h", "../outside/secret")},
		{hard("h", secret)},
		{sym("up", "../outside"), hard("h", "up/secret")},
		{sym("d", outside), dir("d"), dir("x"), sym("x/outside", "../../outside"), reg("x/outside/secret")},
		{{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, reg("dev")},
		{sym(".", outside), reg("secret")},
	} {
		f.Add(tarball(f, hdrs, body))
	}
	f.Add([]byte{})
	f.Add([]byte("not a tarball"))

	before := snapshot(f, base)
	f.Fuzz(func(t *testing.T, data []byte) {
		root, err := os.MkdirTemp(base, "root-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(root)
		_, _ = images.Extract(context.Background(), bytes.NewReader(data), root, images.ExtractOptions{})
		after := snapshot(t, base, filepath.Base(root))
		if after != before {
			t.Fatalf("extraction changed what is outside its directory:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// snapshot describes everything under dir except the skipped top-level
// entries: each path with its mode, owner, link count, times and
// content's digest.
func snapshot(t testing.TB, dir string, skip ...string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for _, s := range skip {
			if rel == s {
				return filepath.SkipDir
			}
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		if rel != "." {
			// dir itself changes as the fuzz body makes and removes
			// its roots; nothing else may.
			fmt.Fprintf(&b, " links %d m %d c %d", st.Nlink, fi.ModTime().UnixNano(), st.Ctim.Nano())
		}
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

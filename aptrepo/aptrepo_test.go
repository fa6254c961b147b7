package aptrepo_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/aptrepo"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// buildDeb makes a real .deb with dpkg-deb from a control file.
func buildDeb(t *testing.T, control string, compress string) []byte {
	t.Helper()
	testsupport.NeedCommand(t, "dpkg-deb")
	dir := t.TempDir()
	root := filepath.Join(dir, "pkg")
	if err := os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "DEBIAN/control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/hi"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "p.deb")
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Z"+compress, "--build", root, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const control = "Package: kiln-hi\nVersion: 1:1.0-1\nArchitecture: amd64\nMaintainer: kiln <kiln@example.invalid>\nDescription: says hi\n a test package\n .\n with a second paragraph\n"

func TestReadDebCompressions(t *testing.T) {
	for _, z := range []string{"xz", "gzip", "zstd", "none"} {
		t.Run(z, func(t *testing.T) {
			deb := buildDeb(t, control, z)
			p, err := aptrepo.ReadDeb(bytes.NewReader(deb), int64(len(deb)))
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != "kiln-hi" || p.Version != "1:1.0-1" || p.Arch != "amd64" || p.Source != "kiln-hi" {
				t.Fatalf("got %+v", p)
			}
			if got := p.PoolPath("main", ".deb"); got != "pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.deb" {
				t.Errorf("pool path %q", got)
			}
			para := string(p.Paragraph("f", 1, "x"))
			if !strings.Contains(para, "Description: says hi\n a test package\n .\n with a second paragraph\n") {
				t.Errorf("description lost its continuation lines:\n%s", para)
			}
		})
	}
}

// TestHostileControl: every control file that could steer a path or
// inject index lines is refused with ErrBadPackage.
func TestHostileControl(t *testing.T) {
	base := "Version: 1.0\nArchitecture: amd64\nDescription: x\n"
	for _, c := range []struct{ name, control string }{
		{"path-like package", "Package: ../../etc\n" + base},
		{"slash in package", "Package: a/b\n" + base},
		{"upper case", "Package: Hello\n" + base},
		{"no package", base},
		{"slash in version", "Package: a1\nVersion: 1/../2\nArchitecture: amd64\n"},
		{"space in arch", "Package: a1\nVersion: 1\nArchitecture: amd64 i386\n"},
		{"slash in source", "Package: a1\nSource: ../x\nVersion: 1\nArchitecture: amd64\n"},
		{"second paragraph", "Package: a1\nVersion: 1\nArchitecture: amd64\n\nPackage: b1\n"},
		{"field twice", "Package: a1\nVersion: 1\nVersion: 2\nArchitecture: amd64\n"},
		{"control char", "Package: a1\nVersion: 1\nArchitecture: amd64\nX: a\rb\n"},
		{"continuation first", " x\nPackage: a1\n"},
		{"not a field", "Package: a1\nVersion: 1\nArchitecture: amd64\njunk\n"},
		{"huge", "Package: a1\nVersion: 1\nArchitecture: amd64\nX: " + strings.Repeat("a", aptrepo.MaxControl) + "\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := aptrepo.ParseControl([]byte(c.control))
			if !errors.Is(err, aptrepo.ErrBadPackage) {
				t.Fatalf("ParseControl = %v, want ErrBadPackage", err)
			}
		})
	}
	// A Filename or SHA256 in the control file is dropped: the repository
	// writes its own.
	p, err := aptrepo.ParseControl([]byte("Package: a1\nVersion: 1\nArchitecture: amd64\nFilename: /etc/shadow\nSHA256: 00\n"))
	if err != nil {
		t.Fatal(err)
	}
	if para := string(p.Paragraph("pool/x.deb", 3, "ab")); strings.Contains(para, "shadow") || strings.Count(para, "SHA256") != 1 {
		t.Fatalf("control's Filename/SHA256 kept:\n%s", para)
	}
}

func TestReadDebNotADeb(t *testing.T) {
	huge := buildDeb(t, "Package: a1\nVersion: 1\nArchitecture: amd64\nDescription: x\nX-Big: "+strings.Repeat("b", aptrepo.MaxControl)+"\n", "gzip")
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"text", []byte("hello, this is not a deb\n")},
		{"ar without control", []byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n")},
		{"truncated member", []byte("!<arch>\ndebian-binary   0           0     0     100644  400       `\n2.0\n")},
		{"huge control", huge},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := aptrepo.ReadDeb(bytes.NewReader(c.data), int64(len(c.data)))
			if !errors.Is(err, aptrepo.ErrBadPackage) {
				t.Fatalf("ReadDeb = %v, want ErrBadPackage", err)
			}
		})
	}
}

// TestSignedIndexGpgv: the index set verifies with gpgv (what apt runs),
// and the Release file names the index files' real digests.
func TestSignedIndexGpgv(t *testing.T) {
	gpgv := testsupport.NeedCommand(t, "gpgv")
	testsupport.NeedCommand(t, "gpg")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	key, err := aptrepo.NewKey("test", now)
	if err != nil {
		t.Fatal(err)
	}
	// The stored form reads back as the same key.
	priv, err := key.Private()
	if err != nil {
		t.Fatal(err)
	}
	key2, err := aptrepo.ParseKey(priv)
	if err != nil || key2.Fingerprint() != key.Fingerprint() {
		t.Fatalf("ParseKey(Private()) = %v, %v", key2, err)
	}
	deb := buildDeb(t, control, "xz")
	p, err := aptrepo.ReadDeb(bytes.NewReader(deb), int64(len(deb)))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(deb)
	repo := aptrepo.Repo{Name: "test", Suite: "stable", Components: []string{"main"}, Arches: []string{"amd64", "arm64"}}
	files, err := aptrepo.Index(repo, []aptrepo.Entry{{Package: p, Component: "main", Filename: p.PoolPath("main", ".deb"), Size: int64(len(deb)), SHA256: hex.EncodeToString(sum[:])}}, now)
	if err != nil {
		t.Fatal(err)
	}
	release := files[len(files)-1]
	if release.Path != "dists/stable/Release" {
		t.Fatalf("last file %q", release.Path)
	}
	for _, f := range files[:len(files)-1] {
		s := sha256.Sum256(f.Data)
		line := " " + hex.EncodeToString(s[:]) + " "
		if !strings.Contains(string(release.Data), line) {
			t.Errorf("Release lacks %s", f.Path)
		}
	}
	in, det, err := key2.Sign(release.Data, now)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := key.Public()
	if err != nil {
		t.Fatal(err)
	}
	// gpgv wants a binary keyring; apt converts a .asc signed-by the same way.
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	asc := write("key.asc", pub)
	ring := filepath.Join(dir, "key.gpg")
	if b, err := exec.Command("gpg", "--homedir", dir, "--batch", "--dearmor", "--output", ring, asc).CombinedOutput(); err != nil {
		t.Fatalf("gpg --dearmor: %v\n%s", err, b)
	}
	if b, err := exec.Command(gpgv, "--keyring", ring, write("InRelease", in)).CombinedOutput(); err != nil {
		t.Fatalf("gpgv InRelease: %v\n%s", err, b)
	}
	if b, err := exec.Command(gpgv, "--keyring", ring, write("Release.gpg", det), write("Release", release.Data)).CombinedOutput(); err != nil {
		t.Fatalf("gpgv Release.gpg: %v\n%s", err, b)
	}
	// A changed Release fails: gpgv checks what it is given.
	tampered := bytes.Replace(in, []byte("Suite: stable"), []byte("Suite: stabla"), 1)
	if err := exec.Command(gpgv, "--keyring", ring, write("bad", tampered)).Run(); err == nil {
		t.Fatal("gpgv accepted a tampered InRelease")
	}
	if got, err := aptrepo.Verify(pub, in); err != nil || !bytes.Equal(bytes.TrimRight(got, "\n"), bytes.TrimRight(release.Data, "\n")) {
		t.Fatalf("Verify = %q, %v", got, err)
	}
}

func TestParseKeyRefuses(t *testing.T) {
	key, err := aptrepo.NewKey("t", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.Public()
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"public only", pub},
		{"garbage", []byte("not a key")},
		{"too large", bytes.Repeat([]byte("a"), aptrepo.MaxKeyFile+1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := aptrepo.ParseKey(c.data); !errors.Is(err, aptrepo.ErrBadKey) {
				t.Fatalf("ParseKey = %v, want ErrBadKey", err)
			}
		})
	}
}

// BenchmarkIndexAndSign writes and signs the index set of a repository of
// 1000 packages (two arches), what every publication does.
func BenchmarkIndexAndSign(b *testing.B) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	key, err := aptrepo.NewKey("bench", now)
	if err != nil {
		b.Fatal(err)
	}
	var entries []aptrepo.Entry
	for i := range 1000 {
		p, err := aptrepo.ParseControl([]byte(fmt.Sprintf("Package: pkg%d\nVersion: 1.%d-1\nArchitecture: amd64\nMaintainer: kiln <kiln@example.invalid>\nDescription: package %d\n a benchmark package\n", i, i, i)))
		if err != nil {
			b.Fatal(err)
		}
		entries = append(entries, aptrepo.Entry{Package: p, Component: "main", Filename: p.PoolPath("main", ".deb"), Size: 1234, SHA256: strings.Repeat("ab", 32)})
	}
	repo := aptrepo.Repo{Name: "bench", Suite: "stable", Components: []string{"main"}, Arches: []string{"amd64", "arm64"}}
	b.ResetTimer()
	for b.Loop() {
		files, err := aptrepo.Index(repo, entries, now)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := key.Sign(files[len(files)-1].Data, now); err != nil {
			b.Fatal(err)
		}
	}
}

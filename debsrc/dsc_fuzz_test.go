package debsrc

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/names"
)

// FuzzParse: a .dsc is uploaded by a client and its file names become
// paths in /in. Any input either fails with ErrMalformed or parses to a
// .dsc with a source, a version and at least one file, each a plain name
// (no directory, once), a size >= 0 and 64 lower-case hex digits.
func FuzzParse(f *testing.F) {
	plain := "Format: 3.0 (quilt)\nSource: hello\nVersion: 2.10-3\nBuild-Depends: debhelper-compat (= 13)\nBuild-Depends-Arch: gettext\nChecksums-Sha256:\n " +
		sum + " 636 hello_2.10.orig.tar.gz\n " + sum + " 12 hello_2.10-3.debian.tar.xz\n"
	f.Add([]byte(plain))
	f.Add([]byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n" + strings.ReplaceAll(plain, "\nSource", "\n- Source") +
		"-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"))
	f.Add([]byte("Source: a\nVersion: 1\nChecksums-Sha256:\n " + sum + " 1 ../../etc/passwd\n"))
	f.Add([]byte("Source: a\nVersion: 1\nChecksums-Sha256:\n " + sum + " 1 a\n " + sum + " 1 a\n"))
	f.Add([]byte("Source: a\nVersion: 1\nChecksums-Sha256: " + sum + " 99999999999999999999 a\n"))
	f.Add([]byte("-----BEGIN PGP SIGNED MESSAGE-----\n\n-----BEGIN PGP SIGNED MESSAGE-----\nSource: a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if d.Source == "" || d.Version == "" || len(d.Files) == 0 {
			t.Fatalf("accepted without source, version or files: %+v", d)
		}
		seen := map[string]bool{}
		for _, fl := range d.Files {
			if !names.Valid(fl.Name) || strings.ContainsAny(fl.Name, "/\x00") || fl.Name == ".." || seen[fl.Name] {
				t.Fatalf("file name %q accepted", fl.Name)
			}
			seen[fl.Name] = true
			if b, err := hex.DecodeString(fl.SHA256); err != nil || len(b) != 32 || strings.ToLower(fl.SHA256) != fl.SHA256 || fl.Size < 0 {
				t.Fatalf("file %+v accepted", fl)
			}
		}
	})
}

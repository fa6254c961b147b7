package debsrc

import (
	"errors"
	"strings"
	"testing"
)

const sum = "b34eddeb39c750ec1daffb175bbdef8a792d2889da62c971d5de3a204a52a2da"

func TestParse(t *testing.T) {
	plain := "Format: 3.0 (native)\nSource: hello\nVersion: 1.0\nBuild-Depends: debhelper-compat (= 13),\n foo\nChecksums-Sha256:\n " + sum + " 636 hello_1.0.tar.xz\n"
	signed := "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n" + strings.ReplaceAll(plain, "\nSource", "\n- Source") + "-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
	for _, tc := range []struct {
		name, in string
		err      error
		signed   bool
	}{
		{"plain", plain, nil, false},
		{"clearsigned with dash-escaping", signed, nil, true},
		{"no checksums", "Source: a\nVersion: 1\n", ErrMalformed, false},
		{"path in name", strings.Replace(plain, "hello_1.0.tar.xz", "../../etc/passwd", 1), ErrMalformed, false},
		{"short sha", strings.Replace(plain, sum, "abcd", 1), ErrMalformed, false},
		{"bad size", strings.Replace(plain, " 636 ", " -1 ", 1), ErrMalformed, false},
		{"unterminated signature", "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + plain, ErrMalformed, false},
		{"no source", "Version: 1\nChecksums-Sha256:\n " + sum + " 1 a\n", ErrMalformed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(tc.in))
			if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if d.Source != "hello" || d.Version != "1.0" || d.Signed != tc.signed || len(d.Files) != 1 || d.Files[0] != (File{"hello_1.0.tar.xz", 636, sum}) {
				t.Fatalf("parsed %+v", d)
			}
			if d.BuildDepends != "debhelper-compat (= 13), foo" {
				t.Fatalf("build-depends %q", d.BuildDepends)
			}
		})
	}
}

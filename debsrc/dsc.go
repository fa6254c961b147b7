// Package debsrc reads Debian source package descriptions (.dsc files) and
// checks the files they name, so that a build is refused before anything
// runs when an upload is incomplete or tampered with.
package debsrc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/names"
)

// Error classes of Parse and Verify, checked with errors.Is.
var (
	// ErrMalformed: the .dsc cannot be read as one.
	ErrMalformed = errors.New("malformed .dsc")
	// ErrMissing: a file the .dsc names is not there.
	ErrMissing = errors.New("file missing")
	// ErrMismatch: a file's size or sha256 differs from the .dsc's.
	ErrMismatch = errors.New("checksum mismatch")
	// ErrBadSignature: the .dsc's signature is missing, bad or by a key
	// outside the keyring.
	ErrBadSignature = errors.New("bad signature")
)

// File is one entry of a .dsc's Checksums-Sha256 field.
type File struct {
	Name   string
	Size   int64
	SHA256 string
}

// DSC is what kiln needs of a .dsc.
type DSC struct {
	Source       string
	Version      string
	Architecture string
	BuildDepends string
	Files        []File
	// Signed is true when the .dsc was clearsigned (whether the
	// signature is good is VerifySignature's business).
	Signed bool
}

// Parse reads a .dsc, clearsigned or not. Every file of Checksums-Sha256
// must have a plain name (no directory), a size and 64 hex digits.
func Parse(data []byte) (*DSC, error) {
	body, signed, err := stripClearsign(data)
	if err != nil {
		return nil, err
	}
	fields, err := parseParagraph(body)
	if err != nil {
		return nil, err
	}
	d := &DSC{
		Source: fields["source"], Version: fields["version"], Architecture: fields["architecture"],
		BuildDepends: joinDeps(fields["build-depends"], fields["build-depends-arch"], fields["build-depends-indep"]),
		Signed:       signed,
	}
	if d.Source == "" || d.Version == "" {
		return nil, fmt.Errorf("%w: no Source or Version field", ErrMalformed)
	}
	sums, ok := fields["checksums-sha256"]
	if !ok {
		return nil, fmt.Errorf("%w: no Checksums-Sha256 field", ErrMalformed)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(sums, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%w: Checksums-Sha256 line %q: want SHA256 SIZE NAME", ErrMalformed, line)
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("%w: Checksums-Sha256 line %q: bad size", ErrMalformed, line)
		}
		sum := strings.ToLower(f[0])
		if b, err := hex.DecodeString(sum); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: Checksums-Sha256 line %q: bad sha256", ErrMalformed, line)
		}
		if !names.Valid(f[2]) || seen[f[2]] {
			return nil, fmt.Errorf("%w: Checksums-Sha256 names %q: want a plain file name, once", ErrMalformed, f[2])
		}
		seen[f[2]] = true
		d.Files = append(d.Files, File{Name: f[2], Size: size, SHA256: sum})
	}
	if len(d.Files) == 0 {
		return nil, fmt.Errorf("%w: Checksums-Sha256 names no file", ErrMalformed)
	}
	return d, nil
}

// Verify checks that every file of d is in dir with its size and sha256,
// and stops at the first bad file, naming it and both checksums. Verify
// changes nothing, so a refused upload is refused the same way every time.
func Verify(dir string, d *DSC) error {
	for _, f := range d.Files {
		p := filepath.Join(dir, f.Name)
		fh, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w (the .dsc names it with sha256 %s)", p, ErrMissing, f.SHA256)
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != f.Size || got != f.SHA256 {
			return fmt.Errorf("%s: %w: the .dsc says sha256 %s (%d bytes), the file has sha256 %s (%d bytes)", p, ErrMismatch, f.SHA256, f.Size, got, n)
		}
	}
	return nil
}

// stripClearsign returns the signed text of an OpenPGP clearsigned
// message (dash-escaping undone), or data itself when it is not signed.
func stripClearsign(data []byte) (body []byte, signed bool, err error) {
	const begin = "-----BEGIN PGP SIGNED MESSAGE-----"
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	if !strings.HasPrefix(strings.TrimLeft(text, "\n"), begin) {
		return []byte(text), false, nil
	}
	lines := strings.Split(strings.TrimLeft(text, "\n"), "\n")[1:]
	// Armor headers ("Hash: SHA512") end at the first empty line.
	i := 0
	for i < len(lines) && lines[i] != "" {
		i++
	}
	if i == len(lines) {
		return nil, false, fmt.Errorf("%w: clearsigned message without a body", ErrMalformed)
	}
	var out bytes.Buffer
	for _, l := range lines[i+1:] {
		if l == "-----BEGIN PGP SIGNATURE-----" {
			return out.Bytes(), true, nil
		}
		out.WriteString(strings.TrimPrefix(l, "- "))
		out.WriteByte('\n')
	}
	return nil, false, fmt.Errorf("%w: clearsigned message without a signature", ErrMalformed)
}

// parseParagraph reads the first deb822 paragraph into lower-cased field
// names; continuation lines are joined with "\n".
func parseParagraph(body []byte) (map[string]string, error) {
	fields := map[string]string{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	started := false
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.TrimSpace(l) == "":
			if started {
				return fields, nil
			}
		case strings.HasPrefix(l, "#"):
		case l[0] == ' ' || l[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("%w: continuation line before any field", ErrMalformed)
			}
			fields[last] += "\n" + strings.TrimSpace(l)
		default:
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				return nil, fmt.Errorf("%w: line %q is not FIELD: VALUE", ErrMalformed, l)
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
			started = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return fields, nil
}

func joinDeps(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p = strings.Join(strings.Fields(p), " "); p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ", ")
}

// VerifySignature checks the .dsc at path against the OpenPGP keys in
// keyring with gpgv(1). ctx kills gpgv.
func VerifySignature(ctx context.Context, path, keyring string) error {
	out, err := exec.CommandContext(ctx, "gpgv", "--keyring", keyring, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: signature not verified with %s: %w: %s", path, keyring, ErrBadSignature, strings.TrimSpace(string(out)))
	}
	return nil
}

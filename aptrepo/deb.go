// Package aptrepo reads Debian binary packages and writes the files of a
// signed apt repository: Packages (plain, gzip and xz), Release, InRelease
// and Release.gpg. It keeps no state: the server (scheduler/repos.go)
// stores the packages and the index files it returns, and switches to a
// new index set in one step. The format is Debian's (see
// https://wiki.debian.org/DebianRepository/Format); docs/publishing.md
// says what kiln's repositories promise.
package aptrepo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrBadPackage is wrapped by every error about a .deb's content: not an
// ar archive, no control file, a control file too large or whose fields
// break the rules below.
var ErrBadPackage = errors.New("bad Debian package")

// Limits on what a .deb may hold before it is refused. A control file is
// a few KiB in practice (Debian's largest are below 64 KiB): the bounds
// keep a hostile package from making the server hold or decompress much.
const (
	// MaxControl bounds the control file, and the decompressed
	// control.tar it comes in.
	MaxControl = 1 << 20
	// MaxControlMember bounds the compressed control.tar member.
	MaxControlMember = 4 << 20
	// maxFields bounds the fields of one control file.
	maxFields = 200
)

// Rules for the fields kiln writes into paths and indexes (Debian policy
// 5.6.1, 5.6.7, 5.6.8): a name or architecture can never hold a '/', a
// space or a newline, so a package cannot place its pool file elsewhere
// nor add lines to an index.
var (
	nameRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,99}$`)
	versionRe = regexp.MustCompile(`^([0-9]{1,9}:)?[0-9][A-Za-z0-9.+~-]{0,99}$`)
	archRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	fieldRe   = regexp.MustCompile(`^[!-9;-~][!-9;-~]{0,63}$`) // no ':' nor space, not starting with '#' or '-' (checked below)
)

// ValidName reports whether s is a valid Debian package name.
func ValidName(s string) bool { return nameRe.MatchString(s) }

// ValidVersion reports whether s is a Debian version kiln accepts: an
// optional epoch, then an upstream version and revision of letters,
// digits and . + ~ -.
func ValidVersion(s string) bool { return versionRe.MatchString(s) }

// ValidArch reports whether s is a Debian architecture name ("all" too).
func ValidArch(s string) bool { return archRe.MatchString(s) }

// Field is one field of a control paragraph; Value keeps continuation
// lines (each starting with a space) as they were.
type Field struct {
	Name  string
	Value string
}

// Package is a .deb's control paragraph.
type Package struct {
	Name    string // Package
	Version string
	Arch    string // Architecture
	Source  string // the source package's name (Package when not given)
	// Fields are the control fields in their order, less those the
	// repository writes itself (Filename, Size and the digests).
	Fields []Field
}

// repoFields are set by the repository, never taken from a package.
var repoFields = map[string]bool{"filename": true, "size": true, "md5sum": true, "sha1": true, "sha256": true, "sha512": true, "description-md5": true}

// ReadDeb reads the control paragraph of the .deb r (size bytes). It reads
// only the ar headers and the control member, never the data member.
func ReadDeb(r io.ReaderAt, size int64) (*Package, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadPackage}, a...)...)
	}
	magic := make([]byte, 8)
	if _, err := r.ReadAt(magic, 0); err != nil || string(magic) != "!<arch>\n" {
		return nil, bad("not an ar archive")
	}
	off := int64(8)
	seenBinary := false
	for i := 0; off < size && i < 8; i++ {
		hdr := make([]byte, 60)
		if _, err := r.ReadAt(hdr, off); err != nil {
			return nil, bad("truncated ar header at %d", off)
		}
		if string(hdr[58:60]) != "`\n" {
			return nil, bad("bad ar header at %d", off)
		}
		name := strings.TrimRight(strings.TrimSpace(string(hdr[0:16])), "/")
		n, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || n < 0 || n > size-off-60 {
			return nil, bad("ar member %q: bad size", name)
		}
		body := io.NewSectionReader(r, off+60, n)
		off += 60 + n + n%2
		switch {
		case name == "debian-binary":
			b := make([]byte, min(n, 16))
			if _, err := body.ReadAt(b, 0); err != nil || !strings.HasPrefix(string(b), "2.") {
				return nil, bad("debian-binary is not 2.x")
			}
			seenBinary = true
		case strings.HasPrefix(name, "control.tar"):
			if !seenBinary {
				return nil, bad("control.tar before debian-binary")
			}
			if n > MaxControlMember {
				return nil, bad("control member has %d bytes; at most %d are allowed", n, MaxControlMember)
			}
			ctl, err := controlFile(name, body)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrBadPackage, err)
			}
			return ParseControl(ctl)
		}
	}
	return nil, bad("no control.tar member")
}

// controlFile returns ./control from the control.tar member name.
func controlFile(name string, body io.Reader) ([]byte, error) {
	var zr io.Reader
	switch strings.TrimPrefix(name, "control.tar") {
	case "":
		zr = body
	case ".gz":
		g, err := gzip.NewReader(body)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		zr = g
	case ".xz":
		x, err := xz.NewReader(body)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		zr = x
	case ".zst":
		z, err := zstd.NewReader(body, zstd.WithDecoderMaxMemory(64<<20), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		defer z.Close()
		zr = z
	default:
		return nil, fmt.Errorf("%s: unknown compression", name)
	}
	// The whole decompressed tar is bounded, not only the control file:
	// a member full of other files cannot make the server inflate much.
	tr := tar.NewReader(&limitErr{r: zr, n: MaxControl + 64<<10})
	for {
		h, err := tr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errors.New("control.tar has no ./control")
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if strings.TrimPrefix(h.Name, "./") != "control" || h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Size > MaxControl {
			return nil, fmt.Errorf("control file has %d bytes; at most %d are allowed", h.Size, MaxControl)
		}
		return io.ReadAll(tr)
	}
}

// limitErr reads at most n bytes and then fails (io.LimitReader would end
// quietly, which a tar reader may take for a complete archive).
type limitErr struct {
	r io.Reader
	n int64
}

func (l *limitErr) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("control.tar decompresses to more than %d bytes", MaxControl+64<<10)
	}
	p = p[:min(int64(len(p)), l.n)]
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// ParseControl parses one control paragraph and checks the fields kiln
// relies on: Package, Version and Architecture by the rules above, no
// field twice, no second paragraph, no control character but tab.
func ParseControl(b []byte) (*Package, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: control: "+format, append([]any{ErrBadPackage}, a...)...)
	}
	if len(b) > MaxControl {
		return nil, bad("%d bytes; at most %d are allowed", len(b), MaxControl)
	}
	text := strings.TrimRight(string(b), "\n")
	p := &Package{}
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		for _, c := range line {
			if (c < 0x20 && c != '\t') || c == 0x7f {
				return nil, bad("line %d: control character %q", i+1, c)
			}
		}
		switch {
		case line == "" || strings.TrimSpace(line) == "":
			return nil, bad("line %d: empty line (one paragraph only)", i+1)
		case line[0] == ' ' || line[0] == '\t':
			if len(p.Fields) == 0 {
				return nil, bad("line %d: continuation line before any field", i+1)
			}
			p.Fields[len(p.Fields)-1].Value += "\n" + line
		case line[0] == '#':
			// A comment (deb-control(5)): dropped.
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok || !fieldRe.MatchString(k) || k[0] == '-' {
				return nil, bad("line %d: not a field", i+1)
			}
			lk := strings.ToLower(k)
			if seen[lk] {
				return nil, bad("field %q given twice", k)
			}
			seen[lk] = true
			if len(p.Fields) >= maxFields {
				return nil, bad("more than %d fields", maxFields)
			}
			p.Fields = append(p.Fields, Field{Name: k, Value: strings.TrimSpace(v)})
		}
	}
	kept := p.Fields[:0]
	for _, f := range p.Fields {
		first, _, _ := strings.Cut(f.Value, "\n")
		switch strings.ToLower(f.Name) {
		case "package":
			p.Name = first
		case "version":
			p.Version = first
		case "architecture":
			p.Arch = first
		case "source":
			// "Source: name (version)" when the versions differ.
			p.Source, _, _ = strings.Cut(first, " ")
		}
		if !repoFields[strings.ToLower(f.Name)] {
			kept = append(kept, f)
		}
	}
	p.Fields = kept
	switch {
	case !ValidName(p.Name):
		return nil, bad("Package %.80q: want a Debian package name (lowercase letters, digits, + - .)", p.Name)
	case !ValidVersion(p.Version):
		return nil, bad("Version %.80q: want [epoch:]version of letters, digits and . + ~ -", p.Version)
	case !ValidArch(p.Arch):
		return nil, bad("Architecture %.80q: want an architecture name", p.Arch)
	case p.Source != "" && !ValidName(p.Source):
		return nil, bad("Source %.80q: want a Debian package name", p.Source)
	}
	if p.Source == "" {
		p.Source = p.Name
	}
	return p, nil
}

// PoolPath is where a package's file lies in the repository, Debian's
// layout: pool/COMPONENT/PREFIX/SOURCE/NAME_VERSION_ARCH.deb, the version
// without its epoch (whose ':' some file systems and URLs mangle).
func (p *Package) PoolPath(component, ext string) string {
	prefix := p.Source[:1]
	if strings.HasPrefix(p.Source, "lib") && len(p.Source) > 3 {
		prefix = p.Source[:4]
	}
	v := p.Version
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after
	}
	return "pool/" + component + "/" + prefix + "/" + p.Source + "/" + p.Name + "_" + v + "_" + p.Arch + ext
}

// Paragraph renders the package's control fields for a Packages index.
func (p *Package) Paragraph(filename string, size int64, sha256 string) []byte {
	var b bytes.Buffer
	for _, f := range p.Fields {
		b.WriteString(f.Name + ": " + f.Value + "\n")
	}
	fmt.Fprintf(&b, "Filename: %s\nSize: %d\nSHA256: %s\n", filename, size, sha256)
	return b.Bytes()
}

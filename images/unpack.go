package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-build/kiln/errdefs"
)

// Expect is what a fleet image's manifest promises of its tar.
type Expect struct {
	TarDigest string // "sha256:<64 hex>"
	TarSize   int64
}

var tarDigestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidTarDigest reports whether d is "sha256:" and 64 lowercase hex digits.
func ValidTarDigest(d string) bool { return tarDigestRe.MatchString(d) }

// MaxTarSize bounds the tar a manifest may announce (1 TiB): a larger one
// is a hostile or broken manifest, not an image.
const MaxTarSize = 1 << 40

// ErrTooLong: the stream has more bytes than the manifest's TarSize.
var ErrTooLong = errors.New("more bytes than the manifest says")

// Check reports what is wrong with e (errdefs.ErrInvalid).
func (e Expect) Check() error {
	if !ValidTarDigest(e.TarDigest) {
		return fmt.Errorf("tar digest %.80q: want sha256: and 64 lowercase hex digits: %w", e.TarDigest, errdefs.ErrInvalid)
	}
	if e.TarSize < 1024 || e.TarSize > MaxTarSize || e.TarSize%512 != 0 {
		return fmt.Errorf("tar size %d: want a multiple of 512 between 1 KiB and 1 TiB: %w", e.TarSize, errdefs.ErrInvalid)
	}
	return nil
}

// UnpackStats sums up an unpack: the entries and file bytes written, and
// the uncompressed tar bytes read.
type UnpackStats struct {
	ExtractStats
	TarBytes int64
}

// Unpack decompresses the zstd stream r and extracts the tar in it into
// dir, which must exist and be empty, checking it against want as it
// goes: every rule of Extract (no absolute names, no "..", nothing through
// a symlink, hard links inside the tree), device nodes only below dev/,
// never more bytes than want.TarSize, and at the end exactly that size and
// want.TarDigest. On any failure it removes what it made in dir (dir
// itself stays, empty) and says why, naming the offending entry; a digest
// mismatch says the tree was discarded. All errors about the stream wrap
// errdefs.ErrInvalid.
func Unpack(ctx context.Context, r io.Reader, dir string, want Expect, opts ExtractOptions) (st UnpackStats, err error) {
	if err := want.Check(); err != nil {
		return st, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return st, err
	}
	if len(ents) > 0 {
		return st, fmt.Errorf("unpack into %s: the directory is not empty: %w", dir, errdefs.ErrInvalid)
	}
	defer func() {
		if err != nil {
			if cerr := emptyDir(dir); cerr != nil {
				err = fmt.Errorf("%w (and removing what was unpacked failed: %v)", err, cerr)
			}
		}
	}()
	// A bounded window: a hostile stream cannot make the decoder take
	// more memory than an image needs.
	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(1<<27), zstd.WithDecoderConcurrency(2))
	if err != nil {
		return st, fmt.Errorf("zstd: %w", err)
	}
	defer zr.Close()
	lr := &limitHashReader{r: zr, max: want.TarSize, h: sha256.New()}
	opts.DevicesUnderDev = true
	xs, err := Extract(ctx, lr, dir, opts)
	st.ExtractStats = xs
	if err != nil {
		return st, wrapInvalid(err)
	}
	// What follows the tar's end marker (padding to a record) is part of
	// the digest too.
	if _, err := io.Copy(io.Discard, lr); err != nil {
		return st, wrapInvalid(fmt.Errorf("after the tar's end: %w", err))
	}
	st.TarBytes = lr.n
	if lr.n != want.TarSize {
		return st, fmt.Errorf("the tar has %d bytes, the manifest says %d: the tree was discarded: %w", lr.n, want.TarSize, errdefs.ErrInvalid)
	}
	got := "sha256:" + hex.EncodeToString(lr.h.Sum(nil))
	if got != want.TarDigest {
		return st, fmt.Errorf("tar digest mismatch: got %s, the manifest says %s: the tree was discarded: %w", got, want.TarDigest, errdefs.ErrInvalid)
	}
	return st, nil
}

// wrapInvalid makes a stream error (bad zstd, bad tar, too long) an
// ErrInvalid one unless it is already classed or a cancellation.
func wrapInvalid(err error) error {
	if errors.Is(err, errdefs.ErrInvalid) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrInvalid)
}

// limitHashReader hashes what it passes and fails once more than max
// bytes came.
type limitHashReader struct {
	r   io.Reader
	n   int64
	max int64
	h   hash.Hash
}

func (l *limitHashReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.h.Write(p[:n])
	l.n += int64(n)
	if l.n > l.max {
		return 0, fmt.Errorf("%w (%d bytes)", ErrTooLong, l.max)
	}
	return n, err
}

// emptyDir removes everything inside dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var first error
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil && first == nil {
			first = err
		}
	}
	return first
}

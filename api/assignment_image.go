package api

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/kiln-build/kiln/names"
)

// Bounds on a server-held image version an assignment may name: a host
// downloads and unpacks what they announce, so a hostile or broken server
// must not make it try a terabyte-sized tar or a name it joins into paths.
const (
	// MaxImageVersion is the highest version number (hosts zero-pad it
	// to six digits in their snapshot names).
	MaxImageVersion = 999999
	// MaxImageTarSize bounds the uncompressed tar (1 TiB).
	MaxImageTarSize = 1 << 40
	// maxImageRecipe bounds the recipe text.
	maxImageRecipe = 4096
)

var tarDigestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidTarDigest reports whether d has the shape of an ImageVersion's
// TarDigest: "sha256:" and 64 lowercase hex digits.
func ValidTarDigest(d string) bool { return tarDigestRe.MatchString(d) }

// Check reports what makes v unusable to a host (the server's answer is
// checked before anything is fetched or made).
func (v *ImageVersion) Check() error {
	switch {
	case !names.Valid(v.Name):
		return fmt.Errorf("image name %.80q is not a valid name", v.Name)
	case v.Version < 1 || v.Version > MaxImageVersion:
		return fmt.Errorf("image %s version %d: want 1 to %d", v.Name, v.Version, MaxImageVersion)
	case !ValidTarDigest(v.TarDigest):
		return fmt.Errorf("image %s tar digest %.80q: want sha256: and 64 lowercase hex digits", v.Ref(), v.TarDigest)
	case v.TarSize < 1024 || v.TarSize > MaxImageTarSize || v.TarSize%512 != 0:
		return fmt.Errorf("image %s tar size %d: want a multiple of 512 from 1 KiB to 1 TiB", v.Ref(), v.TarSize)
	case !ValidSHA256(v.Blob):
		return fmt.Errorf("image %s blob %.80q: want 64 lowercase hex digits", v.Ref(), v.Blob)
	case v.BlobSize < 1 || v.BlobSize > v.TarSize+v.TarSize/8+(1<<20):
		// zstd never grows a tar by more than a small fraction.
		return fmt.Errorf("image %s blob size %d: want 1 to a little more than its tar size %d", v.Ref(), v.BlobSize, v.TarSize)
	case v.Arch != "" && !names.Valid(v.Arch):
		return fmt.Errorf("image %s arch %.80q is not a valid name", v.Ref(), v.Arch)
	case v.OS != "" && v.OS != "linux" && v.OS != "freebsd":
		return fmt.Errorf("image %s os %.80q: want linux or freebsd", v.Ref(), v.OS)
	case v.Method != "" && !names.Valid(v.Method):
		return fmt.Errorf("image %s method %.80q is not a valid name", v.Ref(), v.Method)
	case len(v.Recipe) > maxImageRecipe || strings.ContainsFunc(v.Recipe, notPrintable):
		return fmt.Errorf("image %s recipe: want at most %d printable characters", v.Ref(), maxImageRecipe)
	}
	return nil
}

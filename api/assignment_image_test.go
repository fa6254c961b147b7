package api

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func validImage() *ImageVersion {
	return &ImageVersion{Name: "bookworm", Version: 3, Arch: "amd64", OS: "linux", Method: "debootstrap",
		Recipe: "suite=bookworm packages=build-essential", TarDigest: "sha256:" + strings.Repeat("ab", 32),
		TarSize: 300 << 20, Blob: strings.Repeat("cd", 32), BlobSize: 120 << 20}
}

// An assignment's image version comes from a server the host must not
// trust with its paths or its disk.
func TestAssignmentValidateImage(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(v *ImageVersion)
		ok     bool
	}{
		{"valid", func(*ImageVersion) {}, true},
		{"no arch, os, method, recipe", func(v *ImageVersion) { v.Arch, v.OS, v.Method, v.Recipe = "", "", "", "" }, true},
		{"name ../x", func(v *ImageVersion) { v.Name = "../x" }, false},
		{"name a/b", func(v *ImageVersion) { v.Name = "a/b" }, false},
		{"empty name", func(v *ImageVersion) { v.Name = "" }, false},
		{"name 64 long", func(v *ImageVersion) { v.Name = strings.Repeat("n", 64) }, false},
		{"version 0", func(v *ImageVersion) { v.Version = 0 }, false},
		{"version negative", func(v *ImageVersion) { v.Version = -1 }, false},
		{"version too large", func(v *ImageVersion) { v.Version = MaxImageVersion + 1 }, false},
		{"tar digest without sha256:", func(v *ImageVersion) { v.TarDigest = strings.Repeat("ab", 32) }, false},
		{"tar digest upper hex", func(v *ImageVersion) { v.TarDigest = "sha256:" + strings.Repeat("AB", 32) }, false},
		{"tar digest short", func(v *ImageVersion) { v.TarDigest = "sha256:abc" }, false},
		{"tar digest md5", func(v *ImageVersion) { v.TarDigest = "md5:" + strings.Repeat("ab", 16) }, false},
		{"tar size 0", func(v *ImageVersion) { v.TarSize = 0 }, false},
		{"tar size negative", func(v *ImageVersion) { v.TarSize = -512 }, false},
		{"tar size not in blocks", func(v *ImageVersion) { v.TarSize = 1025 }, false},
		{"tar size over 1 TiB", func(v *ImageVersion) { v.TarSize = MaxImageTarSize + 512 }, false},
		{"blob ../../x", func(v *ImageVersion) { v.Blob = "../../x" }, false},
		{"blob with sha256: prefix", func(v *ImageVersion) { v.Blob = "sha256:" + strings.Repeat("cd", 32) }, false},
		{"blob size 0", func(v *ImageVersion) { v.BlobSize = 0 }, false},
		{"blob far larger than its tar", func(v *ImageVersion) { v.BlobSize = v.TarSize * 2 }, false},
		{"arch ../x", func(v *ImageVersion) { v.Arch = "../x" }, false},
		{"os windows", func(v *ImageVersion) { v.OS = "windows" }, false},
		{"method with a space", func(v *ImageVersion) { v.Method = "a b" }, false},
		{"recipe with escape codes", func(v *ImageVersion) { v.Recipe = "\x1b[2J" }, false},
		{"recipe too long", func(v *ImageVersion) { v.Recipe = strings.Repeat("r", 5000) }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &Assignment{ServerID: "5e5e5e5e00000000", RunID: "12", Fence: "f", Attempt: 1,
				Job: Job{Name: "j", Image: "bookworm", Script: "true"}, Image: validImage()}
			tt.mutate(a.Image)
			err := a.Validate()
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidAssignment) {
				t.Fatalf("err = %v, want ErrInvalidAssignment", err)
			}
		})
	}
}

// What a host joins an accepted image version into stays one name below
// its directory.
func FuzzImageVersionCheck(f *testing.F) {
	for _, s := range []string{"bookworm", "../x", "a/b", "", ".", "..", strings.Repeat("ab", 32), "sha256:" + strings.Repeat("ab", 32), "a\x00b"} {
		f.Add(s, 3, s, int64(4096), s, int64(100))
	}
	f.Fuzz(func(t *testing.T, name string, version int, digest string, tarSize int64, blob string, blobSize int64) {
		v := ImageVersion{Name: name, Version: version, TarDigest: digest, TarSize: tarSize, Blob: blob, BlobSize: blobSize}
		if v.Check() != nil {
			return
		}
		const dir = "/var/lib/kiln/images/fetch"
		for _, el := range []string{v.Name, v.Blob + ".zst", strings.TrimPrefix(v.TarDigest, "sha256:")} {
			p := filepath.Join(dir, el)
			if filepath.Dir(p) != dir {
				t.Fatalf("%q joined into %s is %s", el, dir, p)
			}
		}
		if v.TarSize > MaxImageTarSize || v.BlobSize > v.TarSize*2 || v.Version < 1 {
			t.Fatalf("accepted %+v", v)
		}
	})
}

package api

import (
	"fmt"
	"time"
)

// ImageVersion is the manifest of one version of an image the server
// holds for the whole fleet (docs/images.md). Its root filesystem is a
// deterministic tar (sorted names, numeric owners, modes, mtimes, xattrs,
// hardlinks, device nodes only under /dev), zstd-compressed and kept in
// the blob store under Blob. TarDigest, the digest of the uncompressed
// tar, identifies the tree: it is what runs record and twins share.
type ImageVersion struct {
	Name    string `json:"name"`
	Version int    `json:"version"` // 1, 2, ...: assigned by the server at publish
	Arch    string `json:"arch"`    // kiln arch name (amd64, arm64, ...)
	OS      string `json:"os"`      // linux, freebsd
	// Method and Recipe say how the tree was made (the image method and
	// its options, e.g. "debootstrap" and "suite=bookworm packages=...").
	Method string `json:"method,omitempty"`
	Recipe string `json:"recipe,omitempty"`
	// TarDigest is "sha256:<hex>" of the uncompressed tar; TarSize its
	// length. A host refuses a stream that is longer or hashes otherwise.
	TarDigest string `json:"tar_digest"`
	TarSize   int64  `json:"tar_size"`
	// Blob is the sha256 (hex) of the compressed stream in the blob
	// store, BlobSize its length.
	Blob     string    `json:"blob"`
	BlobSize int64     `json:"blob_size"`
	Created  time.Time `json:"created"`
	// Hosts that reported holding this version (listings only).
	Hosts []string `json:"hosts,omitempty"`
}

// Ref is the version's name as users write it: NAME@VERSION.
func (v ImageVersion) Ref() string { return fmt.Sprintf("%s@%d", v.Name, v.Version) }

// PublishImageRequest asks the server to record a new version of an
// image whose compressed blob was uploaded before (UploadBlob). Version
// 0 means "the next one"; a given version that exists is refused unless
// it has the same TarDigest (then the publish is a no-op).
type PublishImageRequest struct {
	Version ImageVersion `json:"version"`
}

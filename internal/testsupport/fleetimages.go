package testsupport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/kiln-build/kiln/api"
)

// SetPhase reports what the fake host does for run a before its script
// (api.Client.SetRunPhase).
func (w *FakeWorker) SetPhase(a *api.Assignment, phase string) {
	w.t.Helper()
	if err := w.c.SetRunPhase(context.Background(), a.RunID, a.Fence, phase); err != nil {
		w.t.Fatal(err)
	}
}

// PublishFakeImage uploads blob with admin and publishes it as the next
// version of image name for linux/amd64, with a tar digest made up from
// the blob (the server takes it as given; only a host unpacking it checks
// it). For server tests that need a server-held image but no real tree.
func PublishFakeImage(t testing.TB, admin *api.Client, name string, blob []byte) api.ImageVersion {
	t.Helper()
	ctx := context.Background()
	b := sha256.Sum256(blob)
	td := sha256.Sum256(append([]byte("tar:"), blob...))
	if err := admin.UploadBlob(ctx, hex.EncodeToString(b[:]), bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	v, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: api.ImageVersion{
		Name: name, Arch: "amd64", OS: "linux", Method: "busybox",
		TarDigest: "sha256:" + hex.EncodeToString(td[:]), TarSize: int64(len(blob)) * 4,
		Blob: hex.EncodeToString(b[:]), BlobSize: int64(len(blob)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return *v
}

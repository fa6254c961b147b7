package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestImageServerCommands drives `kiln image list --fleet/--server` and
// `kiln image rm` through the real binary against a real server: the
// listing names the hosts whose facts hold a version, rm removes one
// version and is refused without a server or with a malformed reference.
func TestImageServerCommands(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	blob := []byte("compressed tree")
	h := sha256.Sum256(blob)
	if err := admin.UploadBlob(ctx, hex.EncodeToString(h[:]), bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	td := sha256.Sum256([]byte("tar"))
	v, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: api.ImageVersion{Name: "bookworm", Arch: "amd64", OS: "linux",
		Method: "debootstrap", TarDigest: "sha256:" + hex.EncodeToString(td[:]), TarSize: 4 << 20, Blob: hex.EncodeToString(h[:]), BlobSize: int64(len(blob))}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := api.Facts{OS: "linux", Arch: "amd64", Slots: 1, FreeSlots: 1, FleetImages: []string{v.TarDigest}}
	enrolled, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: "holder", Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	// A run pinned to the version, leased by the host, which says it
	// fetches the image: run info shows both.
	j, err := api.ParseJobFile([]byte("name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	worker := srv.ClientWith(enrolled.Token)
	a, err := worker.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(5 * time.Second)})
	if err != nil || a == nil {
		t.Fatalf("lease: %+v %v", a, err)
	}
	if err := worker.SetRunPhase(ctx, a.RunID, a.Fence, api.PhaseFetchingImage); err != nil {
		t.Fatal(err)
	}
	info, errOut, code := srv.Run("run", "info", a.RunID)
	if code != 0 || !strings.Contains(info, "fetching image bookworm@1 (15 B)") || !strings.Contains(info, "bookworm@1 ("+v.TarDigest+")") {
		t.Fatalf("run info: exit %d\n%s%s", code, info, errOut)
	}
	if _, err := worker.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"image", "list", "--fleet"}, {"image", "list", "--server", srv.URL, "-n", "bookworm"}} {
		out, errOut, code := srv.Run(args...)
		if code != 0 {
			t.Fatalf("kiln %v: exit %d: %s", args, code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "IMAGE") {
			t.Fatalf("kiln %v:\n%s", args, out)
		}
		for _, want := range []string{"bookworm@1", "amd64", "debootstrap", v.TarDigest[:19], "4.0M", "holder"} {
			if !strings.Contains(lines[1], want) {
				t.Fatalf("kiln %v: %q lacks %q", args, lines[1], want)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "rm", "bookworm@1"}, "give --server URL or --fleet"},
		{[]string{"image", "rm", "--fleet", "bookworm"}, "want NAME@VERSION"},
		{[]string{"image", "rm", "--fleet", "bookworm@0"}, "want NAME@VERSION"},
		{[]string{"image", "rm", "--fleet", "bookworm@7"}, "no image bookworm@7"},
	} {
		if _, errOut, code := srv.Run(tc.args...); code == 0 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("kiln %v: exit %d, %q (want an error with %q)", tc.args, code, errOut, tc.want)
		}
	}
	out, errOut, code := srv.Run("image", "rm", "--fleet", "bookworm@1")
	if code != 0 || out != "removed bookworm@1\n" {
		t.Fatalf("image rm: exit %d %q %s", code, out, errOut)
	}
	if vs, err := admin.ListImageVersions(ctx, ""); err != nil || len(vs) != 0 {
		t.Fatalf("after rm: %+v %v", vs, err)
	}
}

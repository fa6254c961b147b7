package scheduler_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// imageBlob uploads content as a blob with the admin token and returns a
// manifest of it to publish as image name (version 0: the next).
func imageBlob(t *testing.T, srv *testsupport.TestServer, name, content string) api.ImageVersion {
	t.Helper()
	b := []byte(content)
	if err := srv.Client().UploadBlob(context.Background(), sha(b), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	// The tar digest would be of the uncompressed tar; the server takes
	// it as given (the host verifies it when it unpacks).
	td := sha256.Sum256([]byte("tar of " + content))
	return api.ImageVersion{Name: name, Arch: "amd64", OS: "linux", Method: "busybox", Recipe: "test",
		TarDigest: "sha256:" + hex.EncodeToString(td[:]), TarSize: 10240, Blob: sha(b), BlobSize: int64(len(b))}
}

func publish(t *testing.T, c *api.Client, v api.ImageVersion) api.ImageVersion {
	t.Helper()
	out, err := c.PublishImage(context.Background(), api.PublishImageRequest{Version: v})
	if err != nil {
		t.Fatalf("publish %s: %v", v.Name, err)
	}
	return *out
}

// TestImagePublish: versions are numbered by the server, a republished
// tree is a no-op, another tree under a taken (or removed) version is
// refused, the newest is version 0, and removing takes one version.
func TestImagePublish(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	one := imageBlob(t, srv, "bookworm", "one")
	two := imageBlob(t, srv, "bookworm", "two")

	v1 := publish(t, admin, one)
	if v1.Version != 1 || v1.TarDigest != one.TarDigest || v1.Created.IsZero() {
		t.Fatalf("first publish: %+v", v1)
	}
	if again := publish(t, admin, one); again.Version != 1 || !again.Created.Equal(v1.Created) {
		t.Fatalf("republishing the same tree must answer version 1 unchanged: %+v", again)
	}
	if v2 := publish(t, admin, two); v2.Version != 2 {
		t.Fatalf("second tree: version %d, want 2", v2.Version)
	}
	clash := two
	clash.Version = 1
	if _, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: clash}); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "bookworm@1 exists with another digest") {
		t.Fatalf("another tree under version 1: %v", err)
	}
	newest, err := admin.GetImageVersion(ctx, "bookworm", 0)
	if err != nil || newest.Version != 2 || newest.TarDigest != two.TarDigest {
		t.Fatalf("newest: %+v %v", newest, err)
	}
	if _, err := admin.GetImageVersion(ctx, "bookworm", 9); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("missing version: %v", err)
	}
	if err := admin.RemoveImageVersion(ctx, "bookworm", 2); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveImageVersion(ctx, "bookworm", 2); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("removing twice: %v", err)
	}
	// The removed number is not given to other content, nor taken back.
	if _, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: clash}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("version 1 with another tree after a remove: %v", err)
	}
	three := imageBlob(t, srv, "bookworm", "three")
	three.Version = 2
	if _, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: three}); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "not reused") {
		t.Fatalf("reusing removed version 2: %v", err)
	}
	three.Version = 0
	if v := publish(t, admin, three); v.Version != 3 {
		t.Fatalf("after removing 2, the next is %d, want 3", v.Version)
	}
	other := publish(t, admin, imageBlob(t, srv, "alpine", "alpine"))
	all, err := admin.ListImageVersions(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, v := range all {
		refs = append(refs, v.Ref())
	}
	if got := strings.Join(refs, " "); got != "alpine@1 bookworm@1 bookworm@3" {
		t.Fatalf("listing %q", got)
	}
	some, err := admin.ListImageVersions(ctx, "alpine")
	if err != nil || len(some) != 1 || some[0].TarDigest != other.TarDigest {
		t.Fatalf("listing of alpine: %+v %v", some, err)
	}
}

// TestImageAdminOnly: only admin tokens publish and remove images; client
// and worker tokens may read them, and workers read the image blobs.
func TestImageAdminOnly(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	client := srv.ClientWith(ct.Token)
	worker := enroll(t, srv, "h1", nil, hostFacts())
	m := imageBlob(t, srv, "bookworm", "content")
	for name, c := range map[string]*api.Client{"client": client, "worker": worker} {
		if _, err := c.PublishImage(ctx, api.PublishImageRequest{Version: m}); !errors.Is(err, api.ErrForbidden) {
			t.Fatalf("%s token published: %v", name, err)
		}
	}
	v := publish(t, admin, m)
	for name, c := range map[string]*api.Client{"client": client, "worker": worker} {
		if err := c.RemoveImageVersion(ctx, "bookworm", 1); !errors.Is(err, api.ErrForbidden) {
			t.Fatalf("%s token removed: %v", name, err)
		}
		if got, err := c.GetImageVersion(ctx, "bookworm", 0); err != nil || got.TarDigest != v.TarDigest {
			t.Fatalf("%s token reads the manifest: %+v %v", name, got, err)
		}
	}
	var buf bytes.Buffer
	if n, err := worker.DownloadBlobFrom(ctx, v.Blob, 3, &buf); err != nil || n != int64(len("content"))-3 || buf.String() != "tent" {
		t.Fatalf("a worker resumes the image blob from byte 3: %d %q %v", n, buf.String(), err)
	}
}

// TestImagePublishBadInput: each malformed manifest is refused with 400
// and a message that names what is wrong, and nothing is recorded.
func TestImagePublishBadInput(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	good := imageBlob(t, srv, "bookworm", "good")
	partial := []byte("never completed")
	// A partial upload: the blob store holds some bytes, not the blob.
	status, _ := call(t, "PUT", fmt.Sprintf("%s/v1/blobs/%s?offset=0&size=%d", srv.URL, sha(partial), len(partial)+10), srv.AdminToken(), partial)
	if status != http.StatusOK {
		t.Fatalf("partial upload: %d", status)
	}
	for _, tc := range []struct {
		name string
		edit func(v *api.ImageVersion)
		want string
	}{
		{"bad name", func(v *api.ImageVersion) { v.Name = "../etc" }, `image name "../etc"`},
		{"negative version", func(v *api.ImageVersion) { v.Version = -1 }, "version -1"},
		{"no arch", func(v *api.ImageVersion) { v.Arch = "" }, `arch ""`},
		{"bad os", func(v *api.ImageVersion) { v.OS = "plan9" }, `os "plan9"`},
		{"bad method", func(v *api.ImageVersion) { v.Method = "a b" }, `method "a b"`},
		{"huge recipe", func(v *api.ImageVersion) { v.Recipe = strings.Repeat("x", 5000) }, "recipe of 5000 bytes"},
		{"digest without algorithm", func(v *api.ImageVersion) { v.TarDigest = strings.TrimPrefix(v.TarDigest, "sha256:") }, "tar_digest"},
		{"digest not hex", func(v *api.ImageVersion) { v.TarDigest = "sha256:" + strings.Repeat("Z", 64) }, "tar_digest"},
		{"no tar size", func(v *api.ImageVersion) { v.TarSize = 0 }, "tar_size 0"},
		{"bad blob", func(v *api.ImageVersion) { v.Blob = "xyz" }, `blob "xyz"`},
		{"blob not uploaded", func(v *api.ImageVersion) { v.Blob = sha([]byte("absent")) }, "is not uploaded"},
		{"blob incomplete", func(v *api.ImageVersion) { v.Blob, v.BlobSize = sha(partial), int64(len(partial))+10 }, "is not uploaded"},
		{"blob size differs", func(v *api.ImageVersion) { v.BlobSize++ }, "but blob"},
		{"hosts sent", func(v *api.ImageVersion) { v.Hosts = []string{"h1"} }, "hosts is filled in by listings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good
			tc.edit(&v)
			if v.Name == good.Name {
				_, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: v})
				var ae *api.Error
				if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Body.Error, tc.want) {
					t.Fatalf("want 400 naming %q, got %v", tc.want, err)
				}
				return
			}
			// A name the path cannot carry: send the manifest under a
			// valid path; the body's name is checked against it.
			body, _ := json.Marshal(api.PublishImageRequest{Version: v})
			status, eb := call(t, "POST", srv.URL+"/v1/images/bookworm/versions", srv.AdminToken(), body)
			if status != http.StatusBadRequest || !strings.Contains(eb.Error, "the manifest names image") {
				t.Fatalf("want 400, got %d %q", status, eb.Error)
			}
		})
	}
	noName := good
	noName.Name = ""
	body, _ := json.Marshal(api.PublishImageRequest{Version: noName})
	if status, eb := call(t, "POST", srv.URL+"/v1/images/a..b/versions", srv.AdminToken(), body); status != http.StatusBadRequest || !strings.Contains(eb.Error, `image name "a..b"`) {
		t.Fatalf("name with '..': %d %q", status, eb.Error)
	}
	status, eb := call(t, "POST", srv.URL+"/v1/images/bookworm/versions", srv.AdminToken(), []byte(`{"version":{"name":"bookworm"},"extra":1}`))
	if status != http.StatusBadRequest || !strings.Contains(eb.Error, "unknown field") {
		t.Fatalf("unknown field: %d %q", status, eb.Error)
	}
	for _, path := range []string{"/v1/images/bookworm/versions/x", "/v1/images/bookworm/versions/-1", "/v1/images/a..b/versions/1"} {
		if status, _ := call(t, "GET", srv.URL+path, srv.AdminToken(), nil); status != http.StatusBadRequest {
			t.Fatalf("GET %s: %d, want 400", path, status)
		}
	}
	if status, eb := call(t, "DELETE", srv.URL+"/v1/images/bookworm/versions/0", srv.AdminToken(), nil); status != http.StatusBadRequest || !strings.Contains(eb.Error, "name the version") {
		t.Fatalf("DELETE of version 0: %d %q", status, eb.Error)
	}
	if vs, err := admin.ListImageVersions(ctx, ""); err != nil || len(vs) != 0 {
		t.Fatalf("bad publishes recorded versions: %+v %v", vs, err)
	}
}

// TestImagePinning: a job naming a server-held image is pinned at
// execute to the newest version (or the one it names), every member of
// its reproduce group and every requeued attempt to the same version
// though a newer one is published meanwhile; its lease carries the
// manifest, it fits hosts without images, and its version cannot be
// removed until its runs end. A job naming an image the server does not
// hold keeps needing the host's own.
func TestImagePinning(t *testing.T) {
	srv := testsupport.StartServer(t, `lease_duration = "1s"`, `lease_check = "100ms"`)
	ctx := context.Background()
	admin := srv.Client()
	v1 := publish(t, admin, imageBlob(t, srv, "bookworm", "one"))
	addJob(t, admin, "name = \"twins\"\nimage = \"bookworm\"\nscript = \"true\"\nreproduce = 2\n")
	addJob(t, admin, "name = \"old\"\nimage = \"bookworm@1\"\nscript = \"true\"\n")
	addJob(t, admin, "name = \"local\"\nimage = \"alpine\"\nscript = \"true\"\n")
	facts := hostFacts() // no images of their own
	w1 := enroll(t, srv, "h1", nil, facts)
	w2 := enroll(t, srv, "h2", nil, facts)

	first, err := admin.ExecuteJobWith(ctx, "twins", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	v2 := publish(t, admin, imageBlob(t, srv, "bookworm", "two"))
	members, err := admin.ListGroupRuns(ctx, first.Group, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 {
		t.Fatalf("group has %d members", len(members))
	}
	for _, m := range members {
		if m.Image != "bookworm@1" || m.ImageDigest != v1.TarDigest {
			t.Fatalf("member %s pinned to %q %q, want bookworm@1 %s", m.ID, m.Image, m.ImageDigest, v1.TarDigest)
		}
	}
	if err := admin.RemoveImageVersion(ctx, "bookworm", 1); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "pinned by runs") {
		t.Fatalf("removing a version queued runs pin: %v", err)
	}
	// Both members lease on hosts without images, with the manifest; then
	// both hosts go silent and the runs come back as attempt 2, still on
	// version 1 (on two other hosts: a group's member keeps away from the
	// hosts that held its group's members).
	w3 := enroll(t, srv, "h3", nil, facts)
	w4 := enroll(t, srv, "h4", nil, facts)
	for attempt, ws := range [][]*api.Client{1: {w1, w2}, 2: {w3, w4}} {
		for _, w := range ws {
			a := mustLease(t, w, facts, 10*time.Second)
			if a.Attempt != attempt || a.Image == nil || a.Image.Ref() != "bookworm@1" || a.Image.TarDigest != v1.TarDigest || a.Image.Blob != v1.Blob {
				t.Fatalf("attempt %d lease: attempt %d image %+v", attempt, a.Attempt, a.Image)
			}
		}
	}
	if err := admin.RemoveImageVersion(ctx, "bookworm", 1); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("removing a version leased runs pin: %v", err)
	}

	newest, err := admin.ExecuteJobWith(ctx, "twins", api.ExecuteRequest{Reproduce: 2})
	if err != nil {
		t.Fatal(err)
	}
	if newest.Image != "bookworm@2" || newest.ImageDigest != v2.TarDigest {
		t.Fatalf("a later execute pins the newest: %q %q", newest.Image, newest.ImageDigest)
	}
	old, err := admin.ExecuteJobWith(ctx, "old", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if old.Image != "bookworm@1" || old.ImageDigest != v1.TarDigest {
		t.Fatalf("execute's answer lacks the pin: %q %q", old.Image, old.ImageDigest)
	}
	if r, err := admin.GetRun(ctx, old.ID); err != nil || r.Image != "bookworm@1" {
		t.Fatalf("bookworm@1 pins version 1: %+v %v", r, err)
	}
	local, err := admin.ExecuteJobWith(ctx, "local", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := admin.GetRun(ctx, local.ID)
	if err != nil || r.Image != "" || r.ImageDigest != "" {
		t.Fatalf("an image the server does not hold pins nothing: %+v %v", r, err)
	}
	if !strings.Contains(r.Waiting, "has no image alpine") {
		t.Fatalf("the unpinned run waits for a host with its image: %q", r.Waiting)
	}
	for _, id := range []string{old.ID, local.ID, newest.ID} {
		if _, err := admin.CancelRun(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		if _, err := admin.CancelRun(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	// The cancelled leases end when they expire (nobody heartbeats).
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := admin.RemoveImageVersion(ctx, "bookworm", 1)
		if err == nil {
			break
		}
		if !errors.Is(err, api.ErrConflict) || time.Now().After(deadline) {
			t.Fatalf("removing version 1 once its runs ended: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRunPhase: the worker holding a pinned run's lease says it fetches
// the image, and the run shows "fetching image NAME@VERSION (SIZE)" until
// the worker clears it; another fence, an unknown phase, or a run with
// nothing to fetch is refused.
func TestRunPhase(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	m := imageBlob(t, srv, "bookworm", strings.Repeat("x", 3<<20))
	publish(t, admin, m)
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	addJob(t, admin, "name = \"local\"\nimage = \"alpine\"\nscript = \"true\"\n")
	facts := hostFacts("alpine")
	w := enroll(t, srv, "h1", nil, facts)
	run, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, 5*time.Second)
	if err := w.SetRunPhase(ctx, a.RunID, a.Fence, api.PhaseFetchingImage); err != nil {
		t.Fatal(err)
	}
	r, err := admin.GetRun(ctx, run.ID)
	if err != nil || r.Phase != "fetching image bookworm@1 (3 MiB)" {
		t.Fatalf("phase %q %v", r.Phase, err)
	}
	// The host's progress reports: bytes done, rate, and what is left.
	progress := api.RunPhaseRequest{Phase: api.PhaseFetchingImage, Done: 1 << 20, Rate: 512 << 10}
	if err := w.SetRunProgress(ctx, a.RunID, a.Fence, progress); err != nil {
		t.Fatal(err)
	}
	if r, err := admin.GetRun(ctx, run.ID); err != nil || r.Phase != "fetching image bookworm@1 (3 MiB): 1 MiB done, 512 KiB/s, 4s left" {
		t.Fatalf("phase with progress %q %v", r.Phase, err)
	}
	for _, bad := range []api.RunPhaseRequest{
		{Phase: api.PhaseFetchingImage, Done: 4 << 20},
		{Phase: api.PhaseFetchingImage, Done: -1},
		{Phase: api.PhaseFetchingImage, Done: 1, Rate: -5},
	} {
		var ae *api.Error
		if err := w.SetRunProgress(ctx, a.RunID, a.Fence, bad); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			t.Fatalf("progress %+v: %v, want 400", bad, err)
		}
	}
	if err := w.SetRunPhase(ctx, a.RunID, "not-the-fence", api.PhaseNone); !errors.Is(err, api.ErrStaleFence) {
		t.Fatalf("another fence: %v", err)
	}
	var ae *api.Error
	if err := w.SetRunPhase(ctx, a.RunID, a.Fence, "compiling"); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Fatalf("unknown phase: %v", err)
	}
	if err := admin.SetRunPhase(ctx, a.RunID, a.Fence, api.PhaseNone); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("an admin token set a phase: %v", err)
	}
	if err := w.SetRunPhase(ctx, a.RunID, a.Fence, api.PhaseNone); err != nil {
		t.Fatal(err)
	}
	if r, err := admin.GetRun(ctx, run.ID); err != nil || r.Phase != "" {
		t.Fatalf("cleared phase %q %v", r.Phase, err)
	}
	if _, err := admin.ExecuteJobWith(ctx, "local", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	b := mustLease(t, w, facts, 5*time.Second)
	if b.Image != nil {
		t.Fatalf("a host-local image's lease carries %+v", b.Image)
	}
	if err := w.SetRunPhase(ctx, b.RunID, b.Fence, api.PhaseFetchingImage); !errors.As(err, &ae) || !strings.Contains(ae.Body.Error, "nothing to fetch") {
		t.Fatalf("fetching for an unpinned run: %v", err)
	}
	if _, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	if err := w.SetRunPhase(ctx, a.RunID, a.Fence, api.PhaseFetchingImage); !errors.Is(err, api.ErrStaleFence) {
		t.Fatalf("phase of an ended run: %v", err)
	}
}

// TestImagePublishConcurrent: publishes racing for "the next version" of
// one image each get their own number, and racing republishes of one tree
// all answer its one version.
func TestImagePublishConcurrent(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	const n = 8
	var ms []api.ImageVersion
	for i := range n {
		ms = append(ms, imageBlob(t, srv, "racy", fmt.Sprintf("tree %d", i)))
	}
	got := make(chan int, 2*n)
	errs := make(chan error, 2*n)
	for i := range 2 * n {
		go func() {
			v, err := admin.PublishImage(ctx, api.PublishImageRequest{Version: ms[i%n]})
			if err != nil {
				errs <- err
				return
			}
			got <- v.Version
		}()
	}
	seen := map[int]int{}
	for range 2 * n {
		select {
		case v := <-got:
			seen[v]++
		case err := <-errs:
			t.Fatal(err)
		}
	}
	for v := 1; v <= n; v++ {
		if seen[v] != 2 {
			t.Fatalf("versions answered %v: want each of 1..%d twice (one tree, one version)", seen, n)
		}
	}
	vs, err := admin.ListImageVersions(ctx, "racy")
	if err != nil || len(vs) != n {
		t.Fatalf("%d versions stored, want %d (%v)", len(vs), n, err)
	}
}

// TestImagePinnedArch: a run pinned to a version of another arch goes only
// to a host that runs that arch through qemu-user, and a queued one says
// why the others cannot take it.
func TestImagePinnedArch(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	m := imageBlob(t, srv, "armimg", "arm tree")
	m.Arch = "arm64"
	publish(t, admin, m)
	addJob(t, admin, "name = \"j\"\nimage = \"armimg\"\nscript = \"true\"\n")
	native := hostFacts()
	native.EmulatedArchs = nil
	wn := enroll(t, srv, "native", nil, native)
	run, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if a, err := wn.Lease(ctx, api.LeaseRequest{Facts: native, Wait: api.Duration(500 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("a host that cannot run arm64 leased %+v (%v)", a, err)
	}
	r, err := admin.GetRun(ctx, run.ID)
	if err != nil || !strings.Contains(r.Waiting, "native: cannot run arch arm64 of image armimg@1") {
		t.Fatalf("waiting %q %v", r.Waiting, err)
	}
	emul := hostFacts() // emulates arm64
	we := enroll(t, srv, "emulating", nil, emul)
	a := mustLease(t, we, emul, 5*time.Second)
	if a.RunID != run.ID || a.Image == nil || a.Image.Arch != "arm64" {
		t.Fatalf("lease %+v", a)
	}
}

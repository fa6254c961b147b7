package scheduler_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/aptrepo"
	"github.com/kiln-build/kiln/internal/testsupport"
)

func debControl(name, version, arch string) string {
	return fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: kiln <kiln@example.invalid>\nDescription: test package\n made by a kiln test\n", name, version, arch)
}

// repoGet fetches path under the repository with token ("": none).
func repoGet(t *testing.T, srv *testsupport.TestServer, repo, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/repos/"+repo+"/"+path, nil)
	if token != "" {
		req.SetBasicAuth("kiln", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// checkIndex verifies the repository as apt would: InRelease signed by
// the repository's key, and every file it names served with its digest.
// It returns the Packages of amd64.
func checkIndex(t *testing.T, srv *testsupport.TestServer, repo, suite, token string) string {
	t.Helper()
	pub, err := srv.Client().RepoKey(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	code, in := repoGet(t, srv, repo, "dists/"+suite+"/InRelease", token)
	if code != 200 {
		t.Fatalf("InRelease: %d %s", code, in)
	}
	release, err := aptrepo.Verify([]byte(pub), in)
	if err != nil {
		t.Fatalf("InRelease does not verify: %v", err)
	}
	var packages string
	_, list, _ := strings.Cut(string(release), "SHA256:\n")
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("Release line %q", line)
		}
		for _, p := range []string{f[2], aptrepo.ByHashPath(f[2], f[0])} {
			code, b := repoGet(t, srv, repo, "dists/"+suite+"/"+p, token)
			sum := sha256.Sum256(b)
			if code != 200 || hex.EncodeToString(sum[:]) != f[0] {
				t.Fatalf("%s: status %d, sha256 %x, Release says %s", p, code, sum, f[0])
			}
		}
		if f[2] == "main/binary-amd64/Packages" {
			code, b := repoGet(t, srv, repo, "dists/"+suite+"/"+f[2], token)
			if code != 200 {
				t.Fatal(code)
			}
			packages = string(b)
		}
	}
	return packages
}

func publishJob(name, repo, when string, reproduce int) string {
	s := fmt.Sprintf("name = %q\nimage = \"bookworm\"\nscript = \"true\"\n", name)
	if reproduce > 0 {
		s += fmt.Sprintf("reproduce = %d\n", reproduce)
	}
	s += fmt.Sprintf("[publish]\nrepo = %q\n", repo)
	if when != "" {
		s += fmt.Sprintf("when = %q\n", when)
	}
	return s
}

func runWith(t *testing.T, admin, w *api.Client, facts api.Facts, job string, files map[string]string) *api.Run {
	t.Helper()
	if _, err := admin.ExecuteJobWith(context.Background(), job, api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, 10e9)
	finish(t, w, a, files)
	r, err := admin.GetRun(context.Background(), a.RunID)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRepoPublish: a run's .deb is published into a private repository
// whose index verifies; the same bytes again change nothing; other bytes
// for the same version are refused and the run says so with both
// digests; removal publishes an index without the package.
func TestRepoPublish(t *testing.T) {
	srv := testsupport.StartServer(t, "[ui]\npublic = true")
	admin := srv.Client()
	ctx := context.Background()
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	repo, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "tools", Suite: "stable", Arches: []string{"amd64", "arm64"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "tools", Suite: "stable"}); !errors.Is(err, api.ErrConflict) && !strings.Contains(fmt.Sprint(err), "exists") {
		t.Fatalf("second create: %v", err)
	}
	// Private: no token, no index.
	if code, _ := repoGet(t, srv, "tools", "dists/stable/InRelease", ""); code != http.StatusUnauthorized {
		t.Fatalf("private repository without a token: %d", code)
	}
	if pk := checkIndex(t, srv, "tools", "stable", srv.AdminToken()); pk != "" {
		t.Fatalf("new repository lists packages:\n%s", pk)
	}
	addJob(t, admin, publishJob("hi", "tools", "", 0))

	deb := testsupport.Deb(debControl("kiln-hi", "1.0-1", "amd64"), map[string]string{"usr/bin/kiln-hi": "#!/bin/sh\necho hi\n"})
	r1 := runWith(t, admin, w, facts, "hi", map[string]string{"out/kiln-hi_1.0-1_amd64.deb": string(deb), "out/kiln-hi_1.0-1_amd64.buildinfo": "Format: 1.0\n"})
	if len(r1.Publications) != 1 || r1.Publications[0].State != api.PublishedNew || r1.Publications[0].Repo != "tools" {
		t.Fatalf("run 1 publications: %+v", r1.Publications)
	}
	pk := checkIndex(t, srv, "tools", "stable", srv.AdminToken())
	if !strings.Contains(pk, "Package: kiln-hi\n") || !strings.Contains(pk, "Filename: pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.deb\n") || !strings.Contains(pk, "SHA256: "+sha(deb)) {
		t.Fatalf("Packages:\n%s", pk)
	}
	if code, b := repoGet(t, srv, "tools", "pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.deb", srv.AdminToken()); code != 200 || !bytes.Equal(b, deb) {
		t.Fatalf("pool file: %d, %d bytes", code, len(b))
	}
	if code, _ := repoGet(t, srv, "tools", "pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.buildinfo", srv.AdminToken()); code != 200 {
		t.Fatalf("buildinfo: %d", code)
	}
	gen := mustRepo(t, admin, "tools").Generation

	// The same bytes again: unchanged, no new index set.
	r2 := runWith(t, admin, w, facts, "hi", map[string]string{"kiln-hi_1.0-1_amd64.deb": string(deb)})
	if len(r2.Publications) != 1 || r2.Publications[0].State != api.PublishedUnchanged {
		t.Fatalf("run 2 publications: %+v", r2.Publications)
	}
	if g := mustRepo(t, admin, "tools").Generation; g != gen {
		t.Fatalf("generation %d after an unchanged publish, was %d", g, gen)
	}

	// Other bytes, same version: refused, naming both digests.
	other := testsupport.Deb(debControl("kiln-hi", "1.0-1", "amd64"), map[string]string{"usr/bin/kiln-hi": "#!/bin/sh\necho HI\n"})
	r3 := runWith(t, admin, w, facts, "hi", map[string]string{"kiln-hi_1.0-1_amd64.deb": string(other)})
	if len(r3.Publications) != 1 || r3.Publications[0].State != api.PublishRefused ||
		!strings.Contains(r3.Publications[0].Detail, sha(deb)) || !strings.Contains(r3.Publications[0].Detail, sha(other)) {
		t.Fatalf("run 3 publications: %+v", r3.Publications)
	}
	if code, b := repoGet(t, srv, "tools", "pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.deb", srv.AdminToken()); code != 200 || !bytes.Equal(b, deb) {
		t.Fatal("the refused run changed the pool file")
	}
	// `kiln run info` shows it.
	out, _, _ := srv.Run("run", "info", r3.ID)
	if !strings.Contains(out, "published:") || !strings.Contains(out, "refused") || !strings.Contains(out, sha(other)) {
		t.Fatalf("run info:\n%s", out)
	}

	// So does the run page.
	resp, err := http.Get(srv.URL + "/runs/" + r3.ID)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "<dt>Published</dt>") || !strings.Contains(string(page), "refused") || !strings.Contains(string(page), sha(other)) {
		t.Fatalf("run page lacks the publication:\n%s", page)
	}

	// A newer version joins; then the old one is removed.
	deb2 := testsupport.Deb(debControl("kiln-hi", "1.1-1", "all"), map[string]string{"usr/bin/kiln-hi": "#!/bin/sh\necho hi 1.1\n"})
	runWith(t, admin, w, facts, "hi", map[string]string{"kiln-hi_1.1-1_all.deb": string(deb2)})
	pk = checkIndex(t, srv, "tools", "stable", srv.AdminToken())
	if strings.Count(pk, "Package: kiln-hi\n") != 2 {
		t.Fatalf("Packages after 1.1:\n%s", pk)
	}
	if _, err := admin.RemoveRepoPackage(ctx, "tools", "kiln-hi", "1.0-1", ""); err != nil {
		t.Fatal(err)
	}
	pk = checkIndex(t, srv, "tools", "stable", srv.AdminToken())
	if strings.Contains(pk, "Version: 1.0-1\n") || !strings.Contains(pk, "Version: 1.1-1\n") {
		t.Fatalf("Packages after remove:\n%s", pk)
	}
	if code, _ := repoGet(t, srv, "tools", "pool/main/k/kiln-hi/kiln-hi_1.0-1_amd64.deb", srv.AdminToken()); code != 404 {
		t.Fatalf("removed pool file: %d", code)
	}
	if _, err := admin.RemoveRepoPackage(ctx, "tools", "kiln-hi", "1.0-1", ""); err == nil {
		t.Fatal("removing a missing package succeeded")
	}
	_ = repo
}

func mustRepo(t *testing.T, c *api.Client, name string) *api.Repo {
	t.Helper()
	r, err := c.Repo(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRepoBadInput: hostile or broken packages are refused (recorded on
// the run), leave the index as it was, and repository requests with bad
// names, keys and paths are answered with clear errors.
func TestRepoBadInput(t *testing.T) {
	srv := testsupport.StartServer(t)
	admin := srv.Client()
	ctx := context.Background()
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "pub", Suite: "stable", Public: true}); err != nil {
		t.Fatal(err)
	}
	addJob(t, admin, publishJob("bad", "pub", "success", 0))
	before := checkIndex(t, srv, "pub", "stable", "")
	gen := mustRepo(t, admin, "pub").Generation
	for _, c := range []struct {
		name string
		deb  []byte
	}{
		{"path-like package", testsupport.Deb(debControl("../../../etc/passwd", "1", "amd64"), nil)},
		{"newline in version", testsupport.Deb("Package: a1\nVersion: 1\nArchitecture: amd64\nX: y\n\nPackage: injected\n", nil)},
		{"huge control", testsupport.Deb(debControl("a1", "1", "amd64")+"X-Big: "+strings.Repeat("x", 2<<20)+"\n", nil)},
		{"wrong arch", testsupport.Deb(debControl("a1", "1", "s390x"), nil)},
		{"not a deb", []byte("#!/bin/sh\necho not a package\n")},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runWith(t, admin, w, facts, "bad", map[string]string{"x.deb": string(c.deb)})
			if len(r.Publications) != 1 || r.Publications[0].State != api.PublishRefused {
				t.Fatalf("publications: %+v", r.Publications)
			}
		})
	}
	if g := mustRepo(t, admin, "pub").Generation; g != gen {
		t.Fatalf("generation moved to %d by refused packages", g)
	}
	if after := checkIndex(t, srv, "pub", "stable", ""); after != before {
		t.Fatalf("index changed:\n%s", after)
	}
	for _, c := range []struct {
		name string
		req  api.CreateRepoRequest
	}{
		{"slash in name", api.CreateRepoRequest{Name: "a/b", Suite: "s"}},
		{"dotdot suite", api.CreateRepoRequest{Name: "a", Suite: ".."}},
		{"slash suite", api.CreateRepoRequest{Name: "a", Suite: "x/y"}},
		{"bad component", api.CreateRepoRequest{Name: "a", Suite: "s", Components: []string{"../x"}}},
		{"arch all", api.CreateRepoRequest{Name: "a", Suite: "s", Arches: []string{"all"}}},
		{"type rpm", api.CreateRepoRequest{Name: "a", Suite: "s", Type: "rpm"}},
		{"garbage key", api.CreateRepoRequest{Name: "a", Suite: "s", Key: "-----BEGIN PGP PRIVATE KEY BLOCK-----\nxx\n"}},
		{"bad publisher", api.CreateRepoRequest{Name: "a", Suite: "s", Publishers: []string{"ci"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := admin.CreateRepo(ctx, &c.req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
				t.Fatalf("CreateRepo = %v, want 400", err)
			}
		})
	}
	for _, p := range []string{"../kiln.db", "dists/../../x", "dists/stable/main/binary-amd64/by-hash/SHA256/" + strings.Repeat("0", 64), "nothing"} {
		if code, _ := repoGet(t, srv, "pub", p, ""); code != http.StatusNotFound && code != http.StatusBadRequest {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	// A client token may read but not create repositories.
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	var ae *api.Error
	if _, err := srv.ClientWith(tok.Token).CreateRepo(ctx, &api.CreateRepoRequest{Name: "x", Suite: "s"}); !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Fatalf("client CreateRepo = %v, want 403", err)
	}
	// A client's job publishes only into a repository that lists it.
	ci := srv.ClientWith(tok.Token)
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "ci-repo", Suite: "s", Public: true, Publishers: []string{"token:ci"}}); err != nil {
		t.Fatal(err)
	}
	addJob(t, ci, publishJob("ci-pub", "pub", "", 0))
	addJob(t, ci, publishJob("ci-ok", "ci-repo", "", 0))
	deb := string(testsupport.Deb(debControl("from-ci", "1", "amd64"), nil))
	if r := runWith(t, ci, w, facts, "ci-pub", map[string]string{"c.deb": deb}); len(r.Publications) != 1 || r.Publications[0].State != api.PublishRefused ||
		!strings.Contains(r.Publications[0].Detail, "token:ci may not publish") {
		t.Fatalf("client job into another's repository: %+v", r.Publications)
	}
	if pk := checkIndex(t, srv, "pub", "stable", ""); strings.Contains(pk, "from-ci") {
		t.Fatalf("a client published into a repository not listing it:\n%s", pk)
	}
	if r := runWith(t, ci, w, facts, "ci-ok", map[string]string{"c.deb": deb}); len(r.Publications) != 1 || r.Publications[0].State != api.PublishedNew {
		t.Fatalf("client job into its repository: %+v", r.Publications)
	}
}

// TestRepoPublishSurvivesSIGKILL: the server is killed while runs are
// being published one after another; after the restart the repository
// serves one whole index set (InRelease verifies, every file it names
// has its digest) that lists every publication acknowledged before the
// kill, and publishing goes on.
func TestRepoPublishSurvivesSIGKILL(t *testing.T) {
	srv := testsupport.StartServer(t, `lease_duration = "10m"`)
	admin := srv.Client()
	ctx := context.Background()
	facts := hostFacts("bookworm")
	facts.Slots, facts.FreeSlots = 64, 64
	w := enroll(t, srv, "h1", nil, facts)
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "crash", Suite: "s", Public: true}); err != nil {
		t.Fatal(err)
	}
	addJob(t, admin, publishJob("p", "crash", "", 0))
	var mu sync.Mutex
	var acked []string
	var next atomic.Int64
	killAfter(t, srv, 2, func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }, 12, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			v := fmt.Sprintf("1.%d", next.Add(1))
			if _, err := admin.ExecuteJobWith(ctx, "p", api.ExecuteRequest{}); err != nil {
				return
			}
			a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(2e9)})
			if err != nil || a == nil {
				return
			}
			deb := testsupport.Deb(debControl("crashy", v, "amd64"), map[string]string{"usr/share/crashy": v})
			if err := w.UploadArtifact(ctx, a.RunID, a.Fence, sha(deb), bytes.NewReader(deb), int64(len(deb))); err != nil {
				return
			}
			r, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, Artifacts: []api.Artifact{{Path: "c.deb", Size: int64(len(deb)), Mode: 0o644, SHA256: sha(deb)}}})
			if err != nil || r == nil {
				return
			}
			mu.Lock()
			acked = append(acked, v)
			mu.Unlock()
		}
	})
	pk := checkIndex(t, srv, "crash", "s", "")
	for _, v := range acked {
		if !strings.Contains(pk, "Version: "+v+"\n") {
			t.Errorf("acknowledged version %s is not in the index after the restart", v)
		}
	}
	// Every package the index names is served with its digest.
	for _, para := range strings.Split(strings.TrimSpace(pk), "\n\n") {
		var file, want string
		for _, l := range strings.Split(para, "\n") {
			if v, ok := strings.CutPrefix(l, "Filename: "); ok {
				file = v
			}
			if v, ok := strings.CutPrefix(l, "SHA256: "); ok {
				want = v
			}
		}
		code, b := repoGet(t, srv, "crash", file, "")
		if code != 200 || sha(b) != want {
			t.Errorf("%s: %d, sha256 %s, want %s", file, code, sha(b), want)
		}
	}
	t.Logf("%d publications acknowledged before the kill; %d packages indexed after", len(acked), strings.Count(pk, "Package: "))
	// Publishing goes on after the restart.
	deb := testsupport.Deb(debControl("after", "1", "amd64"), nil)
	r := runWith(t, admin, w, facts, "p", map[string]string{"after.deb": string(deb)})
	if len(r.Publications) != 1 || r.Publications[0].State != api.PublishedNew {
		t.Fatalf("publication after the restart: %+v", r.Publications)
	}
	if pk := checkIndex(t, srv, "crash", "s", ""); !strings.Contains(pk, "Package: after\n") {
		t.Fatalf("index after the restart lacks the new package:\n%s", pk)
	}
}

// TestRepoPublishOnVerdict: a reproduce = 2 job publishes once its group
// is reproducible (not at each member's success), and an unreproducible
// group publishes nothing.
func TestRepoPublishOnVerdict(t *testing.T) {
	srv := testsupport.StartServer(t, `reproduce_wait = "1h"`)
	admin := srv.Client()
	ctx := context.Background()
	facts := hostFacts("bookworm")
	w1, w2 := enroll(t, srv, "h1", nil, facts), enroll(t, srv, "h2", nil, facts)
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "r", Suite: "s", Public: true}); err != nil {
		t.Fatal(err)
	}
	addJob(t, admin, publishJob("g", "r", "", 2))
	group := func(debs ...[]byte) *api.Group {
		t.Helper()
		r, err := admin.ExecuteJobWith(ctx, "g", api.ExecuteRequest{})
		if err != nil || r.Group == "" {
			t.Fatalf("execute: %+v %v", r, err)
		}
		a1, a2 := mustLease(t, w1, facts, 10e9), mustLease(t, w2, facts, 10e9)
		first := finish(t, w1, a1, map[string]string{"p.deb": string(debs[0])})
		if len(first.Publications) != 0 {
			t.Fatalf("a member published before the verdict: %+v", first.Publications)
		}
		finish(t, w2, a2, map[string]string{"p.deb": string(debs[1])})
		g, err := admin.GetGroup(ctx, r.Group)
		if err != nil || g.Verdict == nil {
			t.Fatalf("group: %+v %v", g, err)
		}
		return g
	}
	same := testsupport.Deb(debControl("grp", "1", "amd64"), nil)
	g := group(same, same)
	if !g.Verdict.Reproducible || len(g.Publications) != 1 || g.Publications[0].State != api.PublishedNew {
		t.Fatalf("reproducible group: verdict %+v publications %+v", g.Verdict, g.Publications)
	}
	if pk := checkIndex(t, srv, "r", "s", ""); !strings.Contains(pk, "Package: grp\n") {
		t.Fatalf("Packages:\n%s", pk)
	}
	g = group(testsupport.Deb(debControl("grp", "2", "amd64"), map[string]string{"a": "1"}), testsupport.Deb(debControl("grp", "2", "amd64"), map[string]string{"a": "2"}))
	if g.Verdict.Reproducible || len(g.Publications) != 0 {
		t.Fatalf("unreproducible group: verdict %+v publications %+v", g.Verdict, g.Publications)
	}
	if pk := checkIndex(t, srv, "r", "s", ""); strings.Contains(pk, "Version: 2\n") {
		t.Fatalf("unreproducible version published:\n%s", pk)
	}
}

// TestRepoBlobs: the blobs a repository references are its pool files and
// its kept index sets, listed in one query; a removed repository
// references none.
func TestRepoBlobs(t *testing.T) {
	srv := testsupport.StartInProcessServer(t)
	ctx := context.Background()
	facts := testsupport.DefaultFacts("bookworm")
	w := testsupport.EnrollFakeWorker(t, srv.URL, srv.Admin, "h1", facts)
	for _, name := range []string{"one", "two"} {
		if _, err := srv.Admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: name, Suite: "s", Public: true}); err != nil {
			t.Fatal(err)
		}
	}
	addJob(t, srv.Admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n[publish]\nrepo = \"one\"\n")
	if _, err := srv.Admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	deb := testsupport.Deb(debControl("bb", "1", "amd64"), nil)
	a := w.Lease()
	w.Finish(a, api.ResultRequest{Artifacts: []api.Artifact{w.Artifact(a, "b.deb", deb)}})
	blobs, err := srv.RepoBlobs(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	has := func(list []string, sha string) bool {
		for _, s := range list {
			if s == sha {
				return true
			}
		}
		return false
	}
	u, _ := http.Get(srv.URL + "/repos/one/dists/s/InRelease")
	in, _ := io.ReadAll(u.Body)
	u.Body.Close()
	if !has(blobs, sha(deb)) || !has(blobs, sha(in)) {
		t.Fatalf("repository one references %v; want the .deb %s and InRelease %s", blobs, sha(deb), sha(in))
	}
	two, err := srv.RepoBlobs(ctx, "two")
	if err != nil || has(two, sha(deb)) || len(two) == 0 {
		t.Fatalf("repository two references %v (%v)", two, err)
	}
	all, err := srv.RepoBlobs(ctx, "")
	if err != nil || len(all) < len(blobs) {
		t.Fatalf("all: %v %v", all, err)
	}
	if err := srv.Admin.RemoveRepo(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if after, err := srv.RepoBlobs(ctx, "one"); err != nil || len(after) != 0 {
		t.Fatalf("removed repository references %v (%v)", after, err)
	}
}

// TestRepoBlobsSurviveRetention: once retention removed the run that
// published a package, the package and the index set stay served: the
// sweep keeps the blobs repositories reference (liveBlobQueries).
func TestRepoBlobsSurviveRetention(t *testing.T) {
	f := retentionServer(t, nil, "keep_last = 1")
	ctx := context.Background()
	if _, err := f.admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "kept", Suite: "s", Public: true}); err != nil {
		t.Fatal(err)
	}
	addJob(t, f.admin, publishJob("p", "kept", "", 0))
	deb := testsupport.Deb(debControl("survivor", "1", "amd64"), nil)
	first, err := f.admin.GetRun(ctx, f.run(t, f.admin, "p", map[string]string{"s.deb": string(deb)}).ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Publications) != 1 || first.Publications[0].State != api.PublishedNew {
		t.Fatalf("publications: %+v", first.Publications)
	}
	f.run(t, f.admin, "p", map[string]string{"other.txt": "not a package"})
	time.Sleep(testGrace)
	if _, err := f.admin.GC(ctx, false); err != nil {
		t.Fatal(err)
	}
	// The run that published survivor_1 stays while the repository
	// holds the package (its provenance is that run's), keep_last or not.
	if _, err := f.admin.GetRun(ctx, first.ID); err != nil {
		t.Fatalf("run %s, whose package the repository holds, did not outlive keep_last = 1: %v", first.ID, err)
	}
	if code, b := repoGet(t, f.srv, "kept", "pool/main/s/survivor/survivor_1_amd64.deb", ""); code != 200 || !bytes.Equal(b, deb) {
		t.Fatalf("pool file after gc: %d", code)
	}
	if pk := checkIndex(t, f.srv, "kept", "s", ""); !strings.Contains(pk, "Package: survivor\n") {
		t.Fatalf("index after gc:\n%s", pk)
	}
	// Once the package is removed from the repository, the run goes at
	// the next sweep like any other.
	if _, err := f.admin.RemoveRepoPackage(ctx, "kept", "survivor", "1", "amd64"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testGrace)
	if _, err := f.admin.GC(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.admin.GetRun(ctx, first.ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("run %s after its package left the repository: %v, want not found", first.ID, err)
	}
}

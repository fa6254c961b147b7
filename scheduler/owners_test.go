package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestOwnershipMatrix extends the auth matrix with ownership: a job added
// by the client token "alice" (group team-a) against the tokens of its
// owner, of a group mate ("bob", team-a), of another client ("carol", no
// group) and the admin. Whatever another owner's job reaches (the job, its
// runs, consoles, artifacts, groups and blobs) answers 404 as if it did not
// exist; lists leave it out.
func TestOwnershipMatrix(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	tokens := map[string]string{"admin": srv.AdminToken()}
	for _, tc := range []struct{ name, group, kind string }{
		{"alice", "team-a", "owner"}, {"bob", "team-a", "mate"}, {"carol", "", "other"},
	} {
		ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: tc.name, Group: tc.group})
		if err != nil {
			t.Fatal(err)
		}
		tokens[tc.kind] = ct.Token
	}
	alice := srv.ClientWith(tokens["owner"])
	carol := srv.ClientWith(tokens["other"])

	input := []byte("alice's input\n")
	inSHA := sha(input)
	if err := alice.UploadBlob(ctx, inSHA, bytes.NewReader(input), int64(len(input))); err != nil {
		t.Fatal(err)
	}
	addJob(t, alice, "name = \"a-job\"\nimage = \"bookworm\"\nscript = \"true\"\n[[inputs]]\npath = \"in.txt\"\nsha256 = \""+inSHA+"\"\n")
	done, err := alice.ExecuteJobWith(ctx, "a-job", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	a := mustLease(t, w, facts, 5*time.Second)
	art := []byte("alice's artifact")
	artSHA := sha(art)
	if err := w.UploadArtifact(ctx, done.ID, a.Fence, artSHA, bytes.NewReader(art), int64(len(art))); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReportResult(ctx, done.ID, api.ResultRequest{Fence: a.Fence,
		Artifacts: []api.Artifact{{Path: "a.bin", Size: int64(len(art)), Mode: 0o644, SHA256: artSHA}}}); err != nil {
		t.Fatal(err)
	}
	queued, err := alice.ExecuteJobWith(ctx, "a-job", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	grp, err := alice.ExecuteJobWith(ctx, "a-job", api.ExecuteRequest{Reproduce: 2})
	if err != nil {
		t.Fatal(err)
	}
	job, _ := json.Marshal(api.Job{Name: "a-job", Image: "bookworm", Script: "echo modified",
		Inputs: []api.Input{{Path: "in.txt", SHA256: inSHA}}})
	sched, _ := json.Marshal(api.ScheduleRequest{Schedule: "@daily"})

	kinds := []string{"other", "mate", "owner", "admin"}
	seen := map[string]int{"other": 404, "mate": 200, "owner": 200, "admin": 200}
	routes := []struct {
		name, method, path string
		body               []byte
		want               map[string]int
	}{
		{"job info", "GET", "/v1/jobs/a-job", nil, seen},
		{"modify job", "PUT", "/v1/jobs/a-job", job, seen},
		{"schedule", "PUT", "/v1/jobs/a-job/schedule", sched, seen},
		{"unschedule", "DELETE", "/v1/jobs/a-job/schedule", nil, seen},
		{"execute", "POST", "/v1/jobs/a-job/runs", nil, map[string]int{"other": 404, "mate": 201, "owner": 201, "admin": 201}},
		{"run info", "GET", "/v1/runs/" + done.ID, nil, seen},
		{"observe", "GET", "/v1/runs/" + done.ID + "/log", nil, seen},
		{"list artifacts", "GET", "/v1/runs/" + done.ID + "/artifacts", nil, seen},
		{"group", "GET", "/v1/groups/" + grp.Group, nil, seen},
		{"artifact blob head", "HEAD", "/v1/blobs/" + artSHA, nil, seen},
		{"artifact blob get", "GET", "/v1/blobs/" + artSHA, nil, seen},
		{"input blob head", "HEAD", "/v1/blobs/" + inSHA, nil, seen},
		{"input blob get", "GET", "/v1/blobs/" + inSHA, nil, seen},
		// The mate's cancel goes through; then the run has ended (409),
		// which still shows that the owner and the admin see it.
		{"cancel run", "POST", "/v1/runs/" + queued.ID + "/cancel", nil, map[string]int{"other": 404, "mate": 200, "owner": 409, "admin": 409}},
	}
	for _, rt := range routes {
		for _, kind := range kinds {
			t.Run(rt.name+"/"+kind, func(t *testing.T) {
				got, eb := call(t, rt.method, srv.URL+rt.path, tokens[kind], rt.body)
				if got != rt.want[kind] {
					t.Fatalf("%s %s with the %s's token: %d (%s), want %d", rt.method, rt.path, kind, got, eb.Error, rt.want[kind])
				}
			})
		}
	}

	for _, kind := range kinds {
		t.Run("lists/"+kind, func(t *testing.T) {
			c := srv.ClientWith(tokens[kind])
			visible := kind != "other"
			js, err := c.ListJobs(ctx)
			if err != nil || (len(js) == 1) != visible {
				t.Fatalf("job list: %+v %v", js, err)
			}
			if visible && js[0].Owner != "group:team-a" {
				t.Fatalf("job owner %q, want group:team-a", js[0].Owner)
			}
			for _, job := range []string{"", "a-job"} {
				rs, err := c.ListRuns(ctx, job, 0)
				if err != nil || (len(rs) > 0) != visible {
					t.Fatalf("run list of %q: %d runs %v", job, len(rs), err)
				}
			}
			refs, err := c.FindArtifacts(ctx, artSHA)
			if err != nil || (len(refs) == 1) != visible {
				t.Fatalf("artifact search: %+v %v", refs, err)
			}
		})
	}

	t.Run("inputs the token may not read", func(t *testing.T) {
		for _, s := range []string{inSHA, artSHA} {
			j := &api.Job{Name: "c-job", Image: "bookworm", Script: "true", Inputs: []api.Input{{Path: "x", SHA256: s}}}
			if _, err := carol.AddJob(ctx, j); !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("carol named another owner's blob %s as input: %v", s, err)
			}
		}
		// Holding the bytes is proof enough: carol uploads them herself
		// (the server has them, but she must send them all).
		if err := carol.UploadBlob(ctx, inSHA, bytes.NewReader(input), int64(len(input))); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := carol.DownloadBlob(ctx, inSHA, &got); err != nil || !bytes.Equal(got.Bytes(), input) {
			t.Fatalf("carol's own upload: %v", err)
		}
		j := &api.Job{Name: "c-job", Image: "bookworm", Script: "true", Inputs: []api.Input{{Path: "x", SHA256: inSHA}}}
		if _, err := carol.AddJob(ctx, j); err != nil {
			t.Fatalf("carol's job with the input she uploaded: %v", err)
		}
		if _, err := carol.AddJob(ctx, &api.Job{Name: "a-job", Image: "bookworm", Script: "true"}); !errors.Is(err, api.ErrConflict) {
			t.Fatalf("a job name taken by another owner: %v, want conflict", err)
		}
	})

	t.Run("admin's job", func(t *testing.T) {
		// Jobs stored before owners existed migrate to the admin, like
		// this one: no client token sees them.
		addJob(t, admin, "name = \"admin-job\"\nimage = \"bookworm\"\nscript = \"true\"\n")
		for _, kind := range []string{"owner", "other"} {
			if got, _ := call(t, "GET", srv.URL+"/v1/jobs/admin-job", tokens[kind], nil); got != http.StatusNotFound {
				t.Fatalf("the %s's token sees the admin's job: %d", kind, got)
			}
		}
		ji, err := admin.GetJob(ctx, "admin-job")
		if err != nil || ji.Owner != "admin" {
			t.Fatalf("admin's job: %+v %v", ji, err)
		}
	})

	t.Run("remove job", func(t *testing.T) {
		if got, _ := call(t, "DELETE", srv.URL+"/v1/jobs/a-job", tokens["other"], nil); got != http.StatusNotFound {
			t.Fatalf("another owner removed the job: %d", got)
		}
		if got, _ := call(t, "DELETE", srv.URL+"/v1/jobs/a-job", tokens["mate"], nil); got != http.StatusNoContent {
			t.Fatalf("a group mate could not remove the job: %d", got)
		}
	})
}

// TestPoisonedPartialUpload: a client that predicts an artifact's sha256
// and pre-uploads wrong bytes for it does not keep the worker from
// uploading the real blob; a worker that resumes over its own wrong
// partial starts again from 0; a client can neither read the artifact of a
// run it does not see nor claim it by completing an upload without bytes.
func TestPoisonedPartialUpload(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	mallory := srv.ClientWith(ct.Token)
	art := bytes.Repeat([]byte("reproducible artifact\n"), 1000)
	artSHA := sha(art)
	size := int64(len(art))
	junk := bytes.Repeat([]byte("x"), 1000)
	if got, _ := call(t, "PUT", srv.URL+"/v1/blobs/"+artSHA+"?offset=0&size="+strconv.FormatInt(size, 10), ct.Token, junk); got != http.StatusOK {
		t.Fatalf("mallory's partial upload: %d", got)
	}

	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	run, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	a := mustLease(t, w, facts, 5*time.Second)
	if _, got, err := w.ArtifactReceived(ctx, run.ID, a.Fence, artSHA); err != nil || got != 0 {
		t.Fatalf("the worker sees %d bytes of mallory's partial: %v", got, err)
	}
	// The worker's own bad partial (say, a file that changed under it).
	bad := bytes.Repeat([]byte("y"), 1000)
	path := srv.URL + "/v1/worker/runs/" + run.ID + "/blobs/" + artSHA + "?fence=" + a.Fence
	if got, _ := call(t, "PUT", path+"&offset=0&size="+strconv.FormatInt(size, 10), w.Token, bad); got != http.StatusOK {
		t.Fatalf("worker's first chunk: %d", got)
	}
	if err := w.UploadArtifact(ctx, run.ID, a.Fence, artSHA, bytes.NewReader(art), size); err != nil {
		t.Fatalf("worker upload after a poisoned and a bad partial: %v", err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence,
		Artifacts: []api.Artifact{{Path: "a.bin", Size: size, Mode: 0o644, SHA256: artSHA}}}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := admin.DownloadBlob(ctx, artSHA, &got); err != nil || !bytes.Equal(got.Bytes(), art) {
		t.Fatalf("stored artifact: %v", err)
	}
	if err := mallory.DownloadBlob(ctx, artSHA, &got); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("mallory downloaded an artifact of a run she does not see: %v", err)
	}
	// The blob is stored, but mallory must send every byte to claim it.
	if got, _ := call(t, "PUT", srv.URL+"/v1/blobs/"+artSHA+"?offset="+strconv.FormatInt(size, 10)+"&size="+strconv.FormatInt(size, 10), ct.Token, nil); got != http.StatusConflict {
		t.Fatalf("claiming a stored blob without its bytes: %d, want 409", got)
	}
	if err := mallory.DownloadBlob(ctx, artSHA, &got); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("mallory downloaded the artifact after an empty upload: %v", err)
	}
}

// TestSlowUploadBlocksNobody: while one client's upload body trickles in
// (the request is held open), uploads of another blob, of the same blob by
// another token and of the same blob by the same token all complete.
func TestSlowUploadBlocksNobody(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("blob under upload\n"), 1000)
	blobSHA := sha(data)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", srv.URL+"/v1/blobs/"+blobSHA+"?offset=0&size="+strconv.Itoa(len(data)), pr)
	req.ContentLength = int64(len(data))
	req.Header.Set("Authorization", "Bearer "+ct.Token)
	slow := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	if _, err := pw.Write(data[:100]); err != nil {
		t.Fatal(err)
	}
	// The server holds the slow session once it reports its bytes.
	for {
		_, got, err := srv.ClientWith(ct.Token).BlobReceived(ctx, blobSHA)
		if err != nil {
			t.Fatal(err)
		}
		if got == 100 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	other := []byte("another blob")
	for _, tc := range []struct {
		name string
		c    *api.Client
		data []byte
	}{
		{"another blob, same token", srv.ClientWith(ct.Token), other},
		{"same blob, another token", admin, data},
		{"same blob, same token", srv.ClientWith(ct.Token), data},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.c.UploadBlob(ctx, sha(tc.data), bytes.NewReader(tc.data), int64(len(tc.data))); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := pw.Write(data[100:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if code := <-slow; code != http.StatusOK {
		t.Fatalf("the slow upload ended with %d", code)
	}
	var got bytes.Buffer
	if err := srv.ClientWith(ct.Token).DownloadBlob(ctx, blobSHA, &got); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("the slow token's blob: %v", err)
	}
}

// TestFreedJobNameOnStore: the queries that look a job up by name keep to
// its current incarnation on the store the tests run with (with
// KILN_TEST_STORE=postgres, on PostgreSQL): after alice's job, with a
// secret in its env, is removed and bob adds one of the same name, bob's
// and the admin's runs of that name and bob's job page show nothing of
// alice's. (scheduler/web's TestFreedJobNameHidesOldIncarnation goes
// through every page.)
func TestFreedJobNameOnStore(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	tok := map[string]string{}
	for _, n := range []string{"alice", "bob"} {
		ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: n})
		if err != nil {
			t.Fatal(err)
		}
		tok[n] = ct.Token
	}
	alice, bob := srv.ClientWith(tok["alice"]), srv.ClientWith(tok["bob"])
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	runOnce := func(c *api.Client) string {
		t.Helper()
		r, err := c.ExecuteJobWith(ctx, "shared", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		a := mustLease(t, w, facts, 5*time.Second)
		if _, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, ExitCode: 1}); err != nil {
			t.Fatal(err)
		}
		return r.ID
	}
	addJob(t, alice, "name = \"shared\"\nimage = \"bookworm\"\nscript = \"echo alpha-script\"\n[env]\nTOKEN = \"alpha-secret\"\n")
	runOnce(alice)
	if err := alice.RemoveJob(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	addJob(t, bob, "name = \"shared\"\nimage = \"bookworm\"\nscript = \"echo beta-script\"\n")
	bobRun := runOnce(bob)
	for who, c := range map[string]*api.Client{"bob": bob, "admin": admin} {
		runs, err := c.ListRuns(ctx, "shared", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != 1 || runs[0].ID != bobRun {
			t.Errorf("%s: %d runs of job shared, want only bob's run %s", who, len(runs), bobRun)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/jobs/shared", nil)
	req.Header.Set("Authorization", "Bearer "+tok["bob"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page, []byte("beta-script")) {
		t.Fatalf("bob's job page: %s\n%s", resp.Status, srv.Log())
	}
	for _, s := range []string{"alpha-secret", "alpha-script", "Revision 1 "} {
		if bytes.Contains(page, []byte(s)) {
			t.Errorf("bob's job page shows %q of alice's removed job", s)
		}
	}
	// The success rate counts bob's one ended run, not alice's as well.
	if !bytes.Contains(page, []byte("(0 of 1 ended runs)")) {
		t.Error("bob's job page counts runs of alice's removed job in its success rate")
	}
}

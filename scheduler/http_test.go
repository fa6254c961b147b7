package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// call sends a raw request and returns the status and the error body.
func call(t *testing.T, method, url, token string, body []byte) (int, api.ErrorBody) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && method != "HEAD" {
		if err := json.Unmarshal(b, &eb); err != nil || eb.Error == "" {
			t.Errorf("%s %s: %d answer is not a JSON error: %q", method, url, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, eb
}

// TestAuthMatrix: every token kind against every kind of route.
func TestAuthMatrix(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	facts := hostFacts("bookworm")
	enroll(t, srv, "h1", nil, facts)
	tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wtok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wresp, err := srv.ClientWith(wtok.Token).Enroll(ctx, api.EnrollRequest{Name: "h2", Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	client, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	// Used once before its revocation, so that it sits in the auth cache.
	if _, err := srv.ClientWith(revoked.Token).ListJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.RevokeClientToken(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	expired, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "short", TTL: api.Duration(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	tokens := map[string]string{
		"none":       "",
		"bogus":      "kiln_admin_bogus",
		"enrollment": tok.Token,
		"used":       wtok.Token,
		"worker":     wresp.Token,
		"client":     client.Token,
		"revoked":    revoked.Token,
		"expired":    expired.Token,
		"admin":      srv.AdminToken(),
	}
	kinds := []string{"none", "bogus", "enrollment", "used", "worker", "client", "revoked", "expired", "admin"}
	hb, _ := json.Marshal(api.HeartbeatRequest{Facts: facts})
	zero := strings.Repeat("0", 64)
	// A row's statuses other than 401/403 show that auth let the request
	// through: 400 for a malformed body, 404 for an unknown object.
	routes := []struct {
		name, method, path string
		body               []byte
		want               map[string]int // token kind -> status; missing: 401
	}{
		{"list jobs", "GET", "/v1/jobs", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 200, "admin": 200}},
		{"job info", "GET", "/v1/jobs/nope", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"execute", "POST", "/v1/jobs/nope/runs", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"add job", "POST", "/v1/jobs", []byte("{"), map[string]int{"enrollment": 403, "worker": 403, "client": 400, "admin": 400}},
		{"modify job", "PUT", "/v1/jobs/nope", []byte("{"), map[string]int{"enrollment": 403, "worker": 403, "client": 400, "admin": 400}},
		{"remove job", "DELETE", "/v1/jobs/nope", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"schedule", "PUT", "/v1/jobs/nope/schedule", []byte("{"), map[string]int{"enrollment": 403, "worker": 403, "client": 400, "admin": 400}},
		{"unschedule", "DELETE", "/v1/jobs/nope/schedule", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"list runs", "GET", "/v1/runs", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 200, "admin": 200}},
		{"run info", "GET", "/v1/runs/1", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"observe", "GET", "/v1/runs/1/log", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"cancel run", "POST", "/v1/runs/1/cancel", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"list artifacts", "GET", "/v1/runs/1/artifacts", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"find artifacts", "GET", "/v1/artifacts?sha256=" + zero, nil, map[string]int{"enrollment": 403, "worker": 403, "client": 200, "admin": 200}},
		{"group", "GET", "/v1/groups/1", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 404, "admin": 404}},
		{"enrollment token create", "POST", "/v1/hosts/tokens", []byte("{}"), map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 201}},
		{"host list", "GET", "/v1/hosts", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 200}},
		{"host drain", "POST", "/v1/hosts/nope/drain", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 404}},
		{"host remove", "DELETE", "/v1/hosts/nope", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 404}},
		{"client token create", "POST", "/v1/tokens", []byte("{"), map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 400}},
		{"client token list", "GET", "/v1/tokens", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 200}},
		{"client token revoke", "DELETE", "/v1/tokens/nope", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 403, "admin": 404}},
		{"blob put", "PUT", "/v1/blobs/" + zero + "?offset=0&size=0", nil, map[string]int{"enrollment": 403, "worker": 403, "client": 400, "admin": 400}},
		{"blob head", "HEAD", "/v1/blobs/" + zero, nil, map[string]int{"enrollment": 403, "worker": 404, "client": 404, "admin": 404}},
		{"blob get", "GET", "/v1/blobs/" + zero, nil, map[string]int{"enrollment": 403, "worker": 404, "client": 404, "admin": 404}},
		{"heartbeat", "POST", "/v1/worker/heartbeat", hb, map[string]int{"enrollment": 403, "worker": 200, "client": 403, "admin": 403}},
		{"lease", "POST", "/v1/worker/lease", []byte("{"), map[string]int{"enrollment": 403, "worker": 400, "client": 403, "admin": 403}},
		{"log append", "POST", "/v1/worker/runs/1/log?offset=0", nil, map[string]int{"enrollment": 403, "worker": 404, "client": 403, "admin": 403}},
		{"artifact upload", "PUT", "/v1/worker/runs/1/blobs/" + zero + "?offset=0&size=0", nil, map[string]int{"enrollment": 403, "worker": 404, "client": 403, "admin": 403}},
		{"result", "POST", "/v1/worker/runs/1/result", []byte("{}"), map[string]int{"enrollment": 403, "worker": 404, "client": 403, "admin": 403}},
		// A malformed body shows that auth passed without using the token up.
		{"enroll", "POST", "/v1/enroll", []byte("{"), map[string]int{"enrollment": 400, "worker": 403, "client": 403, "admin": 403}},
		{"healthz", "GET", "/healthz", nil, map[string]int{"none": 200, "bogus": 200, "enrollment": 200, "used": 200, "worker": 200, "client": 200, "revoked": 200, "expired": 200, "admin": 200}},
	}
	for _, rt := range routes {
		for _, kind := range kinds {
			t.Run(rt.name+"/"+kind, func(t *testing.T) {
				want, ok := rt.want[kind]
				if !ok {
					want = http.StatusUnauthorized
				}
				got, eb := call(t, rt.method, srv.URL+rt.path, tokens[kind], rt.body)
				if got != want {
					t.Fatalf("%s %s with %s token: %d (%s), want %d", rt.method, rt.path, kind, got, eb.Error, want)
				}
			})
		}
	}
	t.Run("expired enrollment token", func(t *testing.T) {
		short, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{TTL: api.Duration(time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		if _, err := srv.ClientWith(short.Token).Enroll(ctx, api.EnrollRequest{Name: "late", Facts: facts}); err == nil {
			t.Fatal("expired enrollment token accepted")
		}
	})
	t.Run("removed host", func(t *testing.T) {
		if err := admin.RemoveHost(ctx, "h2"); err != nil {
			t.Fatal(err)
		}
		if got, _ := call(t, "POST", srv.URL+"/v1/worker/heartbeat", wresp.Token, hb); got != 401 {
			t.Fatalf("removed host's credential: %d, want 401", got)
		}
	})
	for kind, tok := range tokens {
		if tok != "" && strings.Contains(srv.Log(), tok) {
			t.Fatalf("the %s token appears in the server log", kind)
		}
	}
}

// TestBadInput: each bad request gets a clear 4xx JSON answer and leaves
// nothing stored.
func TestBadInput(t *testing.T) {
	srv := testsupport.StartServer(t, `max_body = "64KiB"`, `max_log_append = "4KiB"`)
	ctx := context.Background()
	admin := srv.Client()
	at := srv.AdminToken()
	addJob(t, admin, "name = \"good\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	run, err := admin.ExecuteJobWith(ctx, "good", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, time.Second)
	if _, err := w.AppendLog(ctx, run.ID, a.Fence, 0, []byte("ok\n")); err != nil {
		t.Fatal(err)
	}
	wt := w.Token

	jobJSON := func(mut func(*api.Job)) []byte {
		j := api.Job{Name: "new", Image: "bookworm", Script: "true"}
		mut(&j)
		b, _ := json.Marshal(j)
		return b
	}
	data := []byte("payload")
	okSHA := sha(data)
	zero := strings.Repeat("0", 64)
	runURL := "/v1/worker/runs/" + run.ID
	res := func(arts ...api.Artifact) []byte {
		b, _ := json.Marshal(api.ResultRequest{Fence: a.Fence, Artifacts: arts})
		return b
	}
	rows := []struct {
		name, method, path, token string
		body                      []byte
		want                      int
	}{
		{"malformed JSON", "POST", "/v1/jobs", at, []byte(`{"name":`), 400},
		{"unknown field", "POST", "/v1/jobs", at, []byte(`{"name":"x","image":"i","script":"s","bogus":1}`), 400},
		{"trailing data", "POST", "/v1/jobs", at, append(jobJSON(func(*api.Job) {}), []byte(`{}`)...), 400},
		{"oversized body", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Script = strings.Repeat("x", 70<<10) }), 413},
		{"invalid job name", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Name = "../etc" }), 400},
		{"invalid env", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Env = map[string]string{"KILN_RUN": "x"} }), 400},
		{"bad cron in job", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Schedule = "61 * * * *" }), 400},
		{"input not uploaded", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Inputs = []api.Input{{Path: "a", SHA256: zero}} }), 400},
		{"duplicate job", "POST", "/v1/jobs", at, jobJSON(func(j *api.Job) { j.Name = "good" }), 409},
		{"unknown job", "GET", "/v1/jobs/nope", at, nil, 404},
		{"execute unknown job", "POST", "/v1/jobs/nope/runs", at, nil, 404},
		{"modify unknown job", "PUT", "/v1/jobs/nope", at, jobJSON(func(j *api.Job) { j.Name = "nope" }), 404},
		{"rename by modify", "PUT", "/v1/jobs/good", at, jobJSON(func(j *api.Job) { j.Name = "other" }), 400},
		{"bad cron", "PUT", "/v1/jobs/good/schedule", at, []byte(`{"schedule":"* * *"}`), 400},
		{"bad @every", "PUT", "/v1/jobs/good/schedule", at, []byte(`{"schedule":"@every fortnight"}`), 400},
		{"unknown run", "GET", "/v1/runs/999", at, nil, 404},
		{"non-numeric run", "GET", "/v1/runs/abc", at, nil, 404},
		{"wrong sha256", "PUT", "/v1/blobs/" + zero + "?offset=0&size=7", at, data, 400},
		{"malformed sha256", "PUT", "/v1/blobs/XYZ?offset=0&size=7", at, data, 400},
		{"body past size", "PUT", "/v1/blobs/" + okSHA + "?offset=0&size=3", at, data, 413},
		{"blob offset gap", "PUT", "/v1/blobs/" + okSHA + "?offset=3&size=7", at, data[3:], 409},
		{"blob without size", "PUT", "/v1/blobs/" + okSHA, at, data, 400},
		{"log at wrong offset", "POST", runURL + "/log?fence=" + a.Fence + "&offset=10", wt, []byte("x"), 409},
		{"log bad offset", "POST", runURL + "/log?fence=" + a.Fence + "&offset=-1", wt, []byte("x"), 400},
		{"huge log line", "POST", runURL + "/log?fence=" + a.Fence + "&offset=3", wt, bytes.Repeat([]byte("y"), 5<<10), 413},
		{"artifact path ..", "POST", runURL + "/result", wt, res(api.Artifact{Path: "../x", SHA256: okSHA}), 400},
		{"artifact path absolute", "POST", runURL + "/result", wt, res(api.Artifact{Path: "/etc/passwd", SHA256: okSHA}), 400},
		{"artifact not uploaded", "POST", runURL + "/result", wt, res(api.Artifact{Path: "a", SHA256: zero}), 400},
		{"result malformed", "POST", runURL + "/result", wt, []byte(`{"fence":1}`), 400},
		{"lease malformed", "POST", "/v1/worker/lease", wt, []byte(`[]`), 400},
		{"unknown route", "GET", "/v1/nothing", at, nil, 404},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			got, eb := call(t, r.method, srv.URL+r.path, r.token, r.body)
			if got != r.want {
				t.Fatalf("%s %s: %d %q, want %d", r.method, r.path, got, eb.Error, r.want)
			}
		})
	}
	t.Run("nothing stored", func(t *testing.T) {
		js, err := admin.ListJobs(ctx)
		if err != nil || len(js) != 1 || js[0].Revision != 1 || js[0].Schedule != "" {
			t.Fatalf("jobs after bad input: %+v %v", js, err)
		}
		for _, s := range []string{zero, okSHA} {
			complete, received, err := admin.BlobReceived(ctx, s)
			if err != nil || complete || received != 0 {
				t.Fatalf("blob %s after bad uploads: complete %v received %d %v", s, complete, received, err)
			}
		}
		r, err := admin.GetRun(ctx, run.ID)
		if err != nil || r.State != api.StateRunning || r.LogSize != 3 || len(r.Artifacts) != 0 {
			t.Fatalf("run after bad input: %+v %v", r, err)
		}
		runs, _ := admin.ListRuns(ctx, "", 0)
		if len(runs) != 1 {
			t.Fatalf("%d runs, want 1", len(runs))
		}
	})
}

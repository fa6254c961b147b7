package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestClientTokenUserFlow: a client token does what a user does - input
// upload, job add, execute, follow the console, list and download
// artifacts - and is refused from the request after its revocation.
func TestClientTokenUserFlow(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ct.Token, "kiln_client_") || ct.Name != "ci" || !ct.Expires.IsZero() {
		t.Fatalf("created %+v", ct)
	}
	c := srv.ClientWith(ct.Token)

	in := filepath.Join(t.TempDir(), "src.txt")
	os.WriteFile(in, []byte("input\n"), 0o644)
	inSHA, err := c.UploadFile(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	addJob(t, c, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n[[inputs]]\npath = \"src.txt\"\nsha256 = \""+inSHA+"\"\n")
	run, err := c.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	a := mustLease(t, w, facts, time.Second)
	if _, err := w.AppendLog(ctx, run.ID, a.Fence, 0, []byte("built\n")); err != nil {
		t.Fatal(err)
	}
	art := []byte("artifact")
	if err := w.UploadArtifact(ctx, run.ID, a.Fence, sha(art), bytes.NewReader(art), int64(len(art))); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence,
		Artifacts: []api.Artifact{{Path: "a.bin", Size: int64(len(art)), Mode: 0o644, SHA256: sha(art)}}}); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	if r, err := c.FollowLog(ctx, run.ID, &console); err != nil || r.State != api.StateSucceeded || console.String() != "built\n" {
		t.Fatalf("observe with a client token: %+v %q %v", r, console.String(), err)
	}
	as, err := c.ListArtifacts(ctx, run.ID)
	if err != nil || len(as) != 1 || as[0].Path != "a.bin" {
		t.Fatalf("artifacts: %+v %v", as, err)
	}
	var got bytes.Buffer
	if err := c.DownloadBlob(ctx, as[0].SHA256, &got); err != nil || !bytes.Equal(got.Bytes(), art) {
		t.Fatalf("artifact download: %q %v", got.Bytes(), err)
	}
	if _, err := c.ListHosts(ctx); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("client token listed hosts: %v", err)
	}

	// The token is cached by now; its revocation must still count at once.
	if err := admin.RevokeClientToken(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListJobs(ctx); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("revoked token: %v, want unauthorized", err)
	}
	if err := admin.RevokeClientToken(ctx, "ci"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("second revoke: %v, want not found", err)
	}
}

// TestClientTokenManagement: names are unique and valid, ttl expires a
// token, the list shows use but never a token, and only hashes are stored.
func TestClientTokenManagement(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	ci, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  api.ClientTokenRequest
		want error
	}{
		{"duplicate name", api.ClientTokenRequest{Name: "ci"}, api.ErrConflict},
		{"empty name", api.ClientTokenRequest{}, api.ErrBadRequest},
		{"path in name", api.ClientTokenRequest{Name: "../x"}, api.ErrBadRequest},
		{"negative ttl", api.ClientTokenRequest{Name: "neg", TTL: api.Duration(-time.Hour)}, api.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := admin.CreateClientToken(ctx, tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("%+v: %v, want %v", tc.req, err, tc.want)
			}
		})
	}
	short, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "short", TTL: api.Duration(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	long, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "long", TTL: api.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(long.Expires); d <= 0 || d > time.Hour {
		t.Fatalf("1h token expires %v", long.Expires)
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := srv.ClientWith(short.Token).ListJobs(ctx); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("expired token: %v, want unauthorized", err)
	}
	if _, err := srv.ClientWith(ci.Token).ListJobs(ctx); err != nil {
		t.Fatal(err)
	}
	// A restart empties the auth cache: tokens are found by their hash.
	srv.Restart()
	if _, err := srv.ClientWith(long.Token).ListRuns(ctx, "", 0); err != nil {
		t.Fatalf("client token after restart: %v", err)
	}
	ts, err := admin.ListClientTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.ClientTokenInfo{}
	for _, ti := range ts {
		byName[ti.Name] = ti
	}
	for _, tc := range []struct {
		name          string
		used, expires bool
		expired       bool
	}{
		{"ci", true, false, false},
		{"long", true, true, false},
		{"short", false, true, true},
	} {
		t.Run("list "+tc.name, func(t *testing.T) {
			ti, ok := byName[tc.name]
			if !ok {
				t.Fatalf("not listed: %+v", ts)
			}
			if ti.Created.IsZero() || !ti.LastUsed.IsZero() != tc.used || !ti.Expires.IsZero() != tc.expires || ti.Expired != tc.expired {
				t.Fatalf("%+v, want used %v expires %v expired %v", ti, tc.used, tc.expires, tc.expired)
			}
		})
	}
	if len(ts) != 3 {
		t.Fatalf("%d tokens listed, want 3: %+v", len(ts), ts)
	}
	db := srv.DB()
	var n int
	err = db.QueryRow(`SELECT count(*) FROM tokens WHERE kind = 'client' AND hash IN ($1, $2, $3)`, sha([]byte(ci.Token)), sha([]byte(long.Token)), sha([]byte(short.Token))).Scan(&n)
	if err != nil || n != 3 {
		t.Fatalf("client tokens stored by sha256: %d %v", n, err)
	}
	for _, tok := range []string{ci.Token, long.Token, short.Token} {
		var m int
		if err := db.QueryRow(`SELECT count(*) FROM tokens WHERE hash = $1 OR name = $2`, tok, tok).Scan(&m); err != nil || m != 0 {
			t.Fatalf("a plain client token is stored: %d %v", m, err)
		}
		if strings.Contains(srv.Log(), tok) {
			t.Fatal("a client token appears in the server log")
		}
	}
}

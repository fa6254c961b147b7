package web_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestImagePages: the images page lists the server's versions (the hosts
// holding each for an admin only), a version has its page, and the page
// of a run pinned to a version links it and shows the host's phase.
func TestImagePages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := testsupport.PublishFakeImage(t, e.srv.Admin, "bookworm", []byte(strings.Repeat("b", 5<<20)))
	if _, err := e.srv.Admin.AddJob(ctx, &api.Job{Name: "pinned", Image: "bookworm", Script: "true"}); err != nil {
		t.Fatal(err)
	}
	facts := testsupport.DefaultFacts()
	facts.FleetImages = []string{v.TarDigest}
	w := testsupport.EnrollFakeWorker(t, e.srv.URL, e.srv.Admin, "holder", facts)
	if _, err := e.srv.Admin.ExecuteJobWith(ctx, "pinned", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	a := w.Lease()
	w.SetPhase(a, api.PhaseFetchingImage)

	admin := httpBrowser(t)
	login(t, admin, e.srv.URL, e.srv.AdminToken)
	code, body, _ := get(t, admin, e.srv.URL+"/images")
	if code != http.StatusOK || !strings.Contains(body, `<a href="/images/bookworm/1">bookworm@1</a>`) ||
		!strings.Contains(body, `<span class="tag">holder</span>`) || !strings.Contains(body, v.TarDigest[:19]) {
		t.Fatalf("images page for an admin: %d\n%s", code, body)
	}
	code, body, _ = get(t, admin, e.srv.URL+"/images/bookworm/1")
	if code != http.StatusOK || !strings.Contains(body, v.TarDigest) || !strings.Contains(body, v.Blob) || !strings.Contains(body, "holder") {
		t.Fatalf("version page: %d\n%s", code, body)
	}
	for _, path := range []string{"/images/bookworm/2", "/images/bookworm/x", "/images/nope/1"} {
		if code, _, _ := get(t, admin, e.srv.URL+path); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, code)
		}
	}
	code, body, _ = get(t, admin, e.srv.URL+"/runs/"+a.RunID)
	if code != http.StatusOK || !strings.Contains(body, "fetching image bookworm@1 (5 MiB)") || !strings.Contains(body, `<a href="/images/bookworm/1">bookworm@1</a>`) {
		t.Fatalf("run page of a pinned run: %d\n%s", code, body)
	}

	ct, err := e.srv.Admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	client := httpBrowser(t)
	login(t, client, e.srv.URL, ct.Token)
	code, body, _ = get(t, client, e.srv.URL+"/images")
	if code != http.StatusOK || !strings.Contains(body, "bookworm@1") || strings.Contains(body, "holder") {
		t.Fatalf("images page for a client token must list versions without host names: %d\n%s", code, body)
	}
}

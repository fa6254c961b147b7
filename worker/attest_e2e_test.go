//go:build linux

package worker_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

// TestAttestationEndToEnd: two real workers, enrolled with the kiln
// binary (which makes each host's key), run a reproduce group; each run's
// envelope and the group's attestation are fetched from the real server
// and verified offline against the exported host keys: quorum 2 holds, a
// changed byte fails. A host removed after the runs keeps its key, revoked
// later than the runs finished, so they still verify.
func TestAttestationEndToEnd(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	w1 := cl.addWorker(t, "signer-a", "", "", "busybox")
	w2 := cl.addWorker(t, "signer-b", "", "", "busybox")
	for _, w := range []*node{w1, w2} {
		st, err := os.Stat(filepath.Join(w.host.Dir, "signing.key"))
		if err != nil {
			t.Fatalf("%s: no signing key after enroll: %v", w.name, err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: signing key mode %04o, want 0600", w.name, st.Mode().Perm())
		}
	}
	job := cl.addJob(t, `name = "attested"
image = "busybox"
reproduce = 2
script = "set -e; echo fixed $SOURCE_DATE_EPOCH > /out/a.txt"
`)
	cl.waitHeartbeats(t, w1.name, w2.name)
	g := cl.waitGroup(t, cl.executeTwins(t, job), 3*time.Minute)
	if g.Verdict == nil || !g.Verdict.Reproducible {
		t.Fatalf("verdict %+v", g.Verdict)
	}
	ctx := context.Background()
	c := cl.client()
	hosts, err := c.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.KeyID == "" {
			t.Fatalf("host %s is listed without its key", h.Name)
		}
	}
	art := g.Members[0].Artifacts
	if len(art) != 1 {
		t.Fatalf("artifacts %+v", art)
	}
	file := attest.File{Name: "a.txt", SHA256: art[0].SHA256}
	for _, m := range g.Members {
		raw, err := c.RunAttestation(ctx, m.ID)
		if err != nil {
			t.Fatalf("run %s attestation: %v", m.ID, err)
		}
		if !strings.Contains(string(raw), attest.PayloadType) {
			t.Fatalf("run %s: %s", m.ID, raw)
		}
	}
	webSeesProvenance(t, cl, g.Members, hosts)
	raw, err := c.GroupAttestation(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The group attestation names what its members differed in, so that a
	// verifier knows what the verdict covers.
	var ga api.GroupAttestation
	if err := json.Unmarshal(raw, &ga); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"timezone", "hostname", "time"} {
		if !slices.Contains(ga.Varied, n) {
			t.Errorf("group attestation varied %q, want it to name %s", ga.Varied, n)
		}
	}
	envs, err := attest.ReadEnvelopes(raw)
	if err != nil {
		t.Fatal(err)
	}
	// The host goes away after its runs: its key stays, revoked now.
	if err := c.RemoveHost(ctx, w1.name); err != nil {
		t.Fatal(err)
	}
	exported, err := c.HostKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	revoked := 0
	for _, k := range exported {
		if k.Host == w1.name && !k.Revoked.IsZero() {
			revoked++
		}
	}
	if len(exported) != 2 || revoked != 1 {
		t.Fatalf("host keys after removing %s: %+v", w1.name, exported)
	}
	keys, err := attest.NewKeySet(exported)
	if err != nil {
		t.Fatal(err)
	}
	res, err := attest.Verify(ctx, []attest.File{file}, envs, keys, 2)
	if err != nil {
		t.Fatalf("group attestation does not verify with quorum 2: %v", err)
	}
	if got := strings.Join(res[0].Hosts, ","); got != w1.name+","+w2.name {
		t.Fatalf("vouched by %s", got)
	}
	changed := sha256.Sum256([]byte("fixed 0\n"))
	if _, err := attest.Verify(ctx, []attest.File{{Name: "a.txt", SHA256: hex.EncodeToString(changed[:])}}, envs, keys, 2); err == nil {
		t.Fatal("a changed file verified")
	}
}

// webSeesProvenance checks the web view, logged in as the admin: each
// run's page names the host that signed it and links the envelope the
// API serves, and the hosts page shows each host's key.
func webSeesProvenance(t *testing.T, cl *cluster, runs []api.Run, hosts []api.Host) {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	get := func(path string) string {
		t.Helper()
		resp, err := hc.Get(cl.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
		}
		return string(b)
	}
	resp, err := hc.PostForm(cl.srv.URL+"/login", url.Values{"token": {cl.srv.AdminToken()}, "next": {"/"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, r := range runs {
		page := get("/runs/" + r.ID)
		if !strings.Contains(page, "signed by host "+r.Host) || !strings.Contains(page, "/runs/"+r.ID+"/attestation") {
			t.Errorf("run %s's page does not show its provenance", r.ID)
		}
		want, err := cl.client().RunAttestation(context.Background(), r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got := get("/runs/" + r.ID + "/attestation"); got != string(want) {
			t.Errorf("run %s: the web view's envelope differs from the API's:\n%s\n%s", r.ID, got, want)
		}
	}
	// html/template writes a key's "+" as "&#43;": compare the text.
	page := html.UnescapeString(get("/hosts"))
	for _, h := range hosts {
		if !strings.Contains(page, h.KeyID) {
			t.Errorf("the hosts page does not show %s's key %s", h.Name, h.KeyID)
		}
	}
}

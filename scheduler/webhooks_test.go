package scheduler_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

const (
	hookSecret = "s3cret-of-the-hook-0123456789"
	commitA    = "0123456789abcdef0123456789abcdef01234567"
	commitB    = "89abcdef0123456789abcdef0123456789abcdef"
)

func githubPush(ref, commit string) []byte {
	b, _ := json.Marshal(map[string]any{
		"ref": ref, "after": commit,
		"repository": map[string]any{"full_name": "org/app", "clone_url": "https://forge.invalid/org/app.git"},
	})
	return b
}

func hubSign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// deliver POSTs body to the hook with headers and returns the status and
// the answer.
func deliver(t *testing.T, srv *testsupport.TestServer, hook string, headers map[string]string, body []byte) (int, api.WebhookDelivery) {
	t.Helper()
	req, err := http.NewRequest("POST", srv.URL+"/v1/webhooks/"+hook, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out api.WebhookDelivery
	if resp.StatusCode < 300 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("answer %q: %v", b, err)
		}
	}
	return resp.StatusCode, out
}

func githubHeaders(secret, delivery string, body []byte) map[string]string {
	return map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": hubSign(secret, body)}
}

func jobRuns(t *testing.T, c *api.Client, job string) []api.Run {
	t.Helper()
	runs, err := c.ListRuns(context.Background(), job, 0)
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// TestWebhookIn: a signed push runs the job once per delivery id, with the
// event in the run's environment and as the hook's owner; unsigned, wrongly
// signed, oversized and malformed requests run nothing, and a replay runs
// nothing, also after a restart.
func TestWebhookIn(t *testing.T) {
	srv := testsupport.StartServer(t, `webhook_max_body = "64KiB"`)
	ctx := context.Background()
	admin := srv.Client()
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	ci := srv.ClientWith(tok.Token)
	addJob(t, ci, "name = \"app\"\nimage = \"bookworm\"\nscript = \"true\"\n[env]\nFOO = \"bar\"\nWEBHOOK_REF = \"from the job\"\n")
	h, err := ci.CreateWebhook(ctx, api.WebhookRequest{Name: "app-push", Job: "app", Secret: hookSecret})
	if err != nil {
		t.Fatal(err)
	}
	if h.Secret != "" || h.Path != "/v1/webhooks/app-push" || h.Format != api.WebhookGitHub {
		t.Fatalf("created %+v", h)
	}
	w := testsupport.EnrollFakeWorker(t, srv.URL, admin, "h1", hostFacts("bookworm"))

	good := githubPush("refs/heads/main", commitA)
	code, d := deliver(t, srv, "app-push", githubHeaders(hookSecret, "d-1", good), good)
	if code != http.StatusAccepted || d.Run == "" || d.Duplicate {
		t.Fatalf("good delivery: %d %+v", code, d)
	}
	a := w.Lease()
	if a.RunID != d.Run {
		t.Fatalf("leased run %s, the delivery queued %s", a.RunID, d.Run)
	}
	want := map[string]string{
		"FOO": "bar", api.EnvWebhookName: "app-push", api.EnvWebhookEvent: "push", api.EnvWebhookDelivery: "d-1",
		api.EnvWebhookRepository: "org/app", api.EnvWebhookCloneURL: "https://forge.invalid/org/app.git",
		api.EnvWebhookRef: "refs/heads/main", api.EnvWebhookCommit: commitA,
	}
	for k, v := range want {
		if a.Job.Env[k] != v {
			t.Errorf("run env %s = %q, want %q", k, a.Job.Env[k], v)
		}
	}
	if err := a.Validate(); err != nil {
		t.Errorf("a worker refuses the assignment: %v", err)
	}
	// The run is the hook owner's: ci sees it.
	run, err := ci.GetRun(ctx, d.Run)
	if err != nil || run.Trigger != "webhook" {
		t.Fatalf("ci's run %s: %+v %v", d.Run, run, err)
	}

	// A replay of the same delivery queues nothing and names the first run.
	code, dup := deliver(t, srv, "app-push", githubHeaders(hookSecret, "d-1", good), good)
	if code != http.StatusOK || !dup.Duplicate || dup.Run != d.Run {
		t.Fatalf("replay: %d %+v", code, dup)
	}

	bad := func(body []byte) []byte { return body }
	for _, tc := range []struct {
		name    string
		headers map[string]string
		body    []byte
		want    int
	}{
		{"unsigned", map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "u-1"}, good, 401},
		{"another secret", githubHeaders("another-secret-0123456789", "u-2", good), good, 401},
		{"signature of another body", githubHeaders(hookSecret, "u-3", githubPush("refs/heads/evil", commitB)), good, 401},
		{"sha1 signature", map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "u-4", "X-Hub-Signature-256": "sha1=" + hex.EncodeToString(make([]byte, 20))}, good, 401},
		{"not hex", map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "u-5", "X-Hub-Signature-256": "sha256=zz"}, good, 401},
		{"truncated signature", map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "u-6", "X-Hub-Signature-256": hubSign(hookSecret, good)[:40]}, good, 401},
		{"too large", nil, bytes.Repeat([]byte("x"), 65*1024), 413},
		{"no delivery id", githubHeaders(hookSecret, "", good), good, 400},
		{"delivery id with a space", githubHeaders(hookSecret, "a b;c", good), good, 400},
		{"long delivery id", githubHeaders(hookSecret, strings.Repeat("d", 129), good), good, 400},
		{"newline in ref", nil, githubPush("refs/heads/x\nEVIL=1", commitB), 400},
		{"NUL in ref", nil, githubPush("refs/heads/x\x00", commitB), 400},
		{"long ref", nil, githubPush("refs/heads/"+strings.Repeat("a", 2000), commitB), 400},
		{"bad commit", nil, githubPush("refs/heads/main", "HEAD"), 400},
		{"not JSON", nil, []byte("{\"ref\": "), 400},
		{"ref not under refs/", nil, githubPush("main", commitB), 400},
		{"ping", map[string]string{"X-GitHub-Event": "ping", "X-GitHub-Delivery": "p-1", "X-Hub-Signature-256": hubSign(hookSecret, []byte("{}"))}, []byte("{}"), 200},
		{"deleted branch", nil, githubPush("refs/heads/old", strings.Repeat("0", 40)), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := tc.headers
			if hdr == nil {
				hdr = githubHeaders(hookSecret, "x-"+strings.ReplaceAll(tc.name, " ", "-"), tc.body)
			}
			code, out := deliver(t, srv, "app-push", hdr, bad(tc.body))
			if code != tc.want || out.Run != "" {
				t.Errorf("got %d %+v, want %d and no run", code, out, tc.want)
			}
		})
	}
	if code, _ := deliver(t, srv, "no-such-hook", githubHeaders(hookSecret, "n-1", good), good); code != http.StatusNotFound {
		t.Errorf("unknown hook: %d, want 404", code)
	}
	if n := len(jobRuns(t, ci, "app")); n != 1 {
		t.Fatalf("%d runs after one good delivery, a replay and bad ones; want 1", n)
	}

	// Another delivery id is another run.
	second := githubPush("refs/tags/v1", commitB)
	code, d2 := deliver(t, srv, "app-push", githubHeaders(hookSecret, "d-2", second), second)
	if code != http.StatusAccepted || d2.Run == d.Run {
		t.Fatalf("second delivery: %d %+v", code, d2)
	}
	a2 := w.Lease()
	if a2.Job.Env[api.EnvWebhookEvent] != "tag_push" || a2.Job.Env[api.EnvWebhookCommit] != commitB {
		t.Errorf("second run env: %v", a2.Job.Env)
	}

	// The delivery ids outlive the server.
	srv.Restart()
	code, dup = deliver(t, srv, "app-push", githubHeaders(hookSecret, "d-1", good), good)
	if code != http.StatusOK || !dup.Duplicate || dup.Run != d.Run {
		t.Fatalf("replay after restart: %d %+v", code, dup)
	}
	if n := len(jobRuns(t, ci, "app")); n != 2 {
		t.Fatalf("%d runs after two deliveries; want 2", n)
	}

	// Refusals are counted, per hook and in the metrics.
	hooks, err := ci.ListWebhooks(ctx)
	if err != nil || len(hooks) != 1 || hooks[0].Refused != 6 || hooks[0].Accepted != 2 {
		t.Fatalf("hooks: %+v %v (want 6 refused, 2 accepted)", hooks, err)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Counted since the restart: the replay.
	if !strings.Contains(string(metrics), `kiln_webhook_deliveries_total{result="duplicate"} 1`) {
		t.Errorf("metrics lack the duplicate:\n%s", metrics)
	}
	code, _ = deliver(t, srv, "app-push", map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "u-9"}, good)
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if code != 401 || !strings.Contains(string(metrics), `kiln_webhook_deliveries_total{result="unauthorized"} 1`) {
		t.Errorf("unsigned after restart: %d; metrics lack it:\n%s", code, metrics)
	}

	// The database holds the secret sealed, not in plain.
	var sealed string
	if err := srv.DB().QueryRow(`SELECT secret FROM webhooks WHERE name = $1`, "app-push").Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, hookSecret) || sealed == "" {
		t.Errorf("stored secret %q", sealed)
	}

	// A revoked token's hook runs nothing.
	if err := admin.RevokeClientToken(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	third := githubPush("refs/heads/main", commitB)
	if code, _ := deliver(t, srv, "app-push", githubHeaders(hookSecret, "d-3", third), third); code != http.StatusForbidden {
		t.Errorf("delivery to a revoked token's hook: %d, want 403", code)
	}
	if n := len(jobRuns(t, admin, "app")); n != 2 {
		t.Errorf("%d runs after a revoked token's delivery; want 2", n)
	}
}

// TestWebhookFormats: GitLab's token header and the generic signed form;
// hooks are listed and removed by their owner only.
func TestWebhookFormats(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"lib\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	if _, err := admin.CreateWebhook(ctx, api.WebhookRequest{Name: "gl", Job: "lib", Format: api.WebhookGitLab, Secret: hookSecret}); err != nil {
		t.Fatal(err)
	}
	gen, err := admin.CreateWebhook(ctx, api.WebhookRequest{Name: "gen", Job: "lib", Format: api.WebhookGeneric})
	if err != nil {
		t.Fatal(err)
	}
	if len(gen.Secret) < 32 {
		t.Fatalf("server-made secret %q", gen.Secret)
	}
	for _, tc := range []struct {
		name string
		req  api.WebhookRequest
	}{
		{"short secret", api.WebhookRequest{Name: "x", Job: "lib", Secret: "short"}},
		{"newline in secret", api.WebhookRequest{Name: "x", Job: "lib", Secret: "0123456789abcdef\n0123"}},
		{"bad format", api.WebhookRequest{Name: "x", Job: "lib", Format: "svn"}},
		{"bad name", api.WebhookRequest{Name: "../x", Job: "lib"}},
		{"no such job", api.WebhookRequest{Name: "x", Job: "nope"}},
		{"taken name", api.WebhookRequest{Name: "gl", Job: "lib"}},
	} {
		if _, err := admin.CreateWebhook(ctx, tc.req); err == nil {
			t.Errorf("%s: created", tc.name)
		}
	}

	glPush, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "checkout_sha": commitA, "after": commitA,
		"project": map[string]any{"path_with_namespace": "grp/lib", "git_http_url": "https://forge.invalid/grp/lib.git"}})
	gl := func(token, id string) map[string]string {
		return map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": id, "X-Gitlab-Token": token}
	}
	if code, _ := deliver(t, srv, "gl", gl("wrong-token-0123456789abc", "g-1"), glPush); code != 401 {
		t.Errorf("gitlab wrong token: %d", code)
	}
	if code, _ := deliver(t, srv, "gl", gl("", "g-1"), glPush); code != 401 {
		t.Errorf("gitlab no token: %d", code)
	}
	if code, d := deliver(t, srv, "gl", gl(hookSecret, "g-1"), glPush); code != 202 || d.Run == "" {
		t.Errorf("gitlab good token: %d %+v", code, d)
	}

	body := []byte(`{"repository": "me/tool", "ref": "refs/heads/dev", "commit": "` + commitB + `"}`)
	hdr := map[string]string{"X-Kiln-Delivery": "k-1", "X-Kiln-Signature-256": hubSign(gen.Secret, body)}
	if code, d := deliver(t, srv, "gen", hdr, body); code != 202 || d.Run == "" {
		t.Errorf("generic: %d %+v", code, d)
	}
	hdr["X-Kiln-Signature-256"] = hubSign(hookSecret, body)
	hdr["X-Kiln-Delivery"] = "k-2"
	if code, _ := deliver(t, srv, "gen", hdr, body); code != 401 {
		t.Errorf("generic with another secret: %d", code)
	}

	// Another client token neither sees nor removes the admin's hooks.
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	other := srv.ClientWith(tok.Token)
	if hs, err := other.ListWebhooks(ctx); err != nil || len(hs) != 0 {
		t.Errorf("other token lists %+v %v", hs, err)
	}
	if err := other.RemoveWebhook(ctx, "gl"); err == nil {
		t.Error("other token removed the admin's hook")
	}
	if _, err := other.CreateWebhook(ctx, api.WebhookRequest{Name: "mine", Job: "lib"}); err == nil {
		t.Error("other token made a hook on the admin's job")
	}
	if err := admin.RemoveWebhook(ctx, "gl"); err != nil {
		t.Fatal(err)
	}

	// The CLI: create with a secret file (its newline dropped), list, rm.
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(hookSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := srv.Run("webhook", "create", "cli", "--job", "lib", "--format", "gitea", "--secret-from", secretFile)
	if code != 0 || !strings.Contains(out, "url: "+srv.URL+"/v1/webhooks/cli\n") || strings.Contains(out, "secret:") {
		t.Fatalf("webhook create: %d %s %s", code, out, errOut)
	}
	giteaPush := githubPush("refs/heads/main", commitA)
	giteaHdr := map[string]string{"X-Gitea-Event": "push", "X-Gitea-Delivery": "t-1", "X-Gitea-Signature": hubSign(hookSecret, giteaPush)[len("sha256="):]}
	if code, d := deliver(t, srv, "cli", giteaHdr, giteaPush); code != 202 || d.Run == "" {
		t.Errorf("gitea delivery to the CLI's hook: %d %+v", code, d)
	}
	out, _, code = srv.Run("webhook", "list")
	if code != 0 || !strings.Contains(out, "cli") || !strings.Contains(out, "gitea") {
		t.Errorf("webhook list: %d\n%s", code, out)
	}
	if _, errOut, code := srv.Run("webhook", "rm", "cli"); code != 0 {
		t.Errorf("webhook rm: %d %s", code, errOut)
	}
	if code, _ := deliver(t, srv, "gl", gl(hookSecret, "g-2"), glPush); code != 404 {
		t.Errorf("removed hook: %d", code)
	}
}

package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestTokenCommands drives `kiln token create/list/revoke` through the
// real binary against a real server, and uses the client token it made
// with the other commands.
func TestTokenCommands(t *testing.T) {
	srv := testsupport.StartServer(t)
	mustRun := func(t *testing.T, args ...string) string {
		t.Helper()
		out, errOut, code := srv.Run(args...)
		if code != 0 {
			t.Fatalf("kiln %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	out := mustRun(t, "token", "create", "--name", "ci")
	tok := strings.TrimSpace(out)
	if !strings.HasPrefix(tok, "kiln_client_") || out != tok+"\n" {
		t.Fatalf("token create printed %q, want the token alone", out)
	}
	mustRun(t, "token", "create", "--name", "nightly", "--ttl", "2h")

	job := filepath.Join(t.TempDir(), "job.toml")
	os.WriteFile(job, []byte("name = \"hello\"\nimage = \"bookworm\"\nscript = \"true\"\n"), 0o644)
	for _, tc := range []struct {
		args   []string
		ok     bool
		stderr string // with !ok: a part of the error
	}{
		{[]string{"job", "add", job}, true, ""},
		{[]string{"job", "execute", "hello"}, true, ""},
		{[]string{"run", "list", "--job", "hello"}, true, ""},
		{[]string{"host", "list"}, false, "may not"},
		{[]string{"host", "token", "create"}, false, "may not"},
		{[]string{"token", "list"}, false, "may not"},
		{[]string{"token", "create", "--name", "mine"}, false, "may not"},
		{[]string{"token", "revoke", "nightly"}, false, "may not"},
	} {
		t.Run("client "+strings.ReplaceAll(strings.Join(tc.args, " "), job, "job.toml"), func(t *testing.T) {
			_, errOut, code := srv.Run(append([]string{"--token", tok}, tc.args...)...)
			if (code == 0) != tc.ok || !strings.Contains(errOut, tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want success %v (stderr with %q)", code, errOut, tc.ok, tc.stderr)
			}
		})
	}

	var listed []api.ClientTokenInfo
	out = mustRun(t, "token", "list", "--output", "json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("token list --output json: %v\n%s", err, out)
	}
	if strings.Contains(out, tok) || strings.Contains(out, "kiln_client_") {
		t.Fatalf("token list shows a token:\n%s", out)
	}
	if len(listed) != 2 || listed[0].Name != "ci" || listed[1].Name != "nightly" ||
		listed[0].LastUsed.IsZero() || !listed[0].Expires.IsZero() || !listed[1].LastUsed.IsZero() || listed[1].Expires.IsZero() {
		t.Fatalf("token list: %+v", listed)
	}
	if text := mustRun(t, "token", "list"); !strings.HasPrefix(text, "NAME") || !strings.Contains(text, "nightly") {
		t.Fatalf("token list (text):\n%s", text)
	}

	if _, errOut, code := srv.Run("token", "create", "--name", "ci"); code == 0 || !strings.Contains(errOut, "exists") {
		t.Fatalf("duplicate name: exit %d %q", code, errOut)
	}
	if _, _, code := srv.Run("token", "create"); code == 0 {
		t.Fatal("token create without --name succeeded")
	}
	mustRun(t, "token", "revoke", "ci")
	if _, errOut, code := srv.Run("--token", tok, "job", "list"); code == 0 || !strings.Contains(errOut, "unknown token") {
		t.Fatalf("revoked token: exit %d %q", code, errOut)
	}
	if _, errOut, code := srv.Run("token", "revoke", "ci"); code == 0 || !strings.Contains(errOut, "no client token") {
		t.Fatalf("revoke twice: exit %d %q", code, errOut)
	}
	if err := json.Unmarshal([]byte(mustRun(t, "token", "list", "-O", "json")), &listed); err != nil || len(listed) != 1 || listed[0].Name != "nightly" {
		t.Fatalf("after revoke: %+v %v", listed, err)
	}
}

// TestTokenGroupsCLI: tokens made with the same --group share their jobs;
// another client token sees none of them; token list shows the group.
func TestTokenGroupsCLI(t *testing.T) {
	srv := testsupport.StartServer(t)
	tokens := map[string]string{}
	for _, tc := range [][]string{{"alice", "team-a"}, {"bob", "team-a"}, {"carol", ""}} {
		args := []string{"token", "create", "--name", tc[0]}
		if tc[1] != "" {
			args = append(args, "--group", tc[1])
		}
		out, errOut, code := srv.Run(args...)
		if code != 0 {
			t.Fatalf("kiln %v: exit %d: %s", args, code, errOut)
		}
		tokens[tc[0]] = strings.TrimSpace(out)
	}
	job := filepath.Join(t.TempDir(), "job.toml")
	os.WriteFile(job, []byte("name = \"shared\"\nimage = \"bookworm\"\nscript = \"true\"\n"), 0o644)
	for _, tc := range []struct {
		who    string
		args   []string
		ok     bool
		stdout string // with ok: a part of stdout ("" for none)
		absent string // with ok: not in stdout
		stderr string // with !ok: a part of stderr
	}{
		{"alice", []string{"job", "add", job}, true, "", "", ""},
		{"bob", []string{"job", "list"}, true, "shared", "", ""},
		{"bob", []string{"job", "execute", "shared"}, true, "", "", ""},
		{"carol", []string{"job", "list"}, true, "", "shared", ""},
		{"carol", []string{"job", "execute", "shared"}, false, "", "", "no job"},
		{"carol", []string{"job", "rm", "shared"}, false, "", "", "no job"},
		{"carol", []string{"run", "list"}, true, "", "shared", ""},
		{"alice", []string{"run", "list"}, true, "shared", "", ""},
	} {
		t.Run(tc.who+" "+strings.ReplaceAll(strings.Join(tc.args, " "), job, "job.toml"), func(t *testing.T) {
			out, errOut, code := srv.Run(append([]string{"--token", tokens[tc.who]}, tc.args...)...)
			if (code == 0) != tc.ok || !strings.Contains(errOut, tc.stderr) || !strings.Contains(out, tc.stdout) ||
				(tc.absent != "" && strings.Contains(out, tc.absent)) {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
			}
		})
	}
	out, _, _ := srv.Run("token", "list")
	if !strings.Contains(out, "GROUP") || !strings.Contains(out, "team-a") {
		t.Fatalf("token list:\n%s", out)
	}
}

// A token from KILN_TOKEN is used but never printed: --help shows flag
// defaults, and help texts get pasted into bug reports.
func TestHelpHidesEnvToken(t *testing.T) {
	const secret = "kiln_admin_not-for-help-texts"
	t.Setenv("KILN_TOKEN", secret)
	for _, args := range [][]string{{"--help"}, {"job", "--help"}, {"run", "list", "--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out, err := kilnCmd(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, secret) {
				t.Errorf("help shows the token from KILN_TOKEN:\n%s", out)
			}
		})
	}
	g := &globals{}
	root := newRoot(g)
	root.SetArgs([]string{"job", "list", "--server", "127.0.0.1:1"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	_ = root.Execute() // no server there; only the token it took matters
	if g.token != secret {
		t.Errorf("token taken: %q, want KILN_TOKEN's", g.token)
	}
}

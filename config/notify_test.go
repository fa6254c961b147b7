package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNotifyConfig: a [[notify]] to a link-local or metadata address, or
// with a secret that cannot be read, stops the server at config load.
func TestNotifyConfig(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, toml, err string
	}{
		{"ok", "[[notify]]\nurl = \"https://127.0.0.1/x\"\nevents = [\"run.failed\"]\nsecret_file = \"" + secret + "\"", ""},
		{"metadata", "[[notify]]\nurl = \"http://169.254.169.254/\"\nevents = [\"run.failed\"]", "link-local"},
		{"link-local v6", "[[notify]]\nurl = \"http://[fe80::2]/\"\nevents = [\"run.failed\"]", "link-local"},
		{"bad event", "[[notify]]\nurl = \"http://127.0.0.1/\"\nevents = [\"run.done\"]", "run.done"},
		{"twice", "[[notify]]\nurl = \"http://127.0.0.1/\"\nevents = [\"run.failed\"]\n[[notify]]\nurl = \"http://127.0.0.1/\"\nevents = [\"run.succeeded\"]", "twice"},
		{"missing secret", "[[notify]]\nurl = \"http://127.0.0.1/\"\nevents = [\"run.failed\"]\nsecret_file = \"" + secret + ".nope\"", "no such file"},
		{"empty env secret", "[notify_secrets.a]\nenv = \"KILN_TEST_NO_SUCH_VARIABLE\"", "empty"},
		{"secret without source", "[notify_secrets.a]\nowners = [\"x\"]", "set file or env"},
		{"zero backoff", "notify_backoff = \"0s\"", "notify_backoff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".toml")
			if err := os.WriteFile(p, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadServer(p, true)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("got %v, want %q", err, tc.err)
			}
		})
	}
}

package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestServerExampleIsDefaults keeps contrib/server.toml in step with
// DefaultServer.
func TestServerExampleIsDefaults(t *testing.T) {
	got, err := LoadServer(filepath.Join("..", "contrib", "server.toml"), true)
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultServer(); !reflect.DeepEqual(got, want) {
		t.Fatalf("contrib/server.toml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestLoadServerErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, body string }{
		{"unknown key", "bogus = 1\n"},
		{"cert without key", "tls_cert = \"/c.pem\"\n"},
		{"zero attempts", "max_attempts = 0\n"},
		{"bad duration", "lease_duration = \"soon\"\n"},
		{"bad synchronous", "synchronous = \"off\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".toml")
			os.WriteFile(p, []byte(tc.body), 0o644)
			if _, err := LoadServer(p, true); err == nil {
				t.Fatalf("accepted %q", tc.body)
			}
		})
	}
	if _, err := LoadServer(filepath.Join(dir, "missing.toml"), true); err == nil {
		t.Fatal("a missing explicit config was accepted")
	}
	if _, err := LoadServer(filepath.Join(dir, "missing.toml"), false); err != nil {
		t.Fatalf("a missing default config must give the defaults: %v", err)
	}
}

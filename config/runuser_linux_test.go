package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunUserLinux: on Linux [run] user is a numeric uid[:gid] inside the
// sandbox's ids; a name or an id past 65535 is refused with the reason.
func TestRunUserLinux(t *testing.T) {
	tests := []struct{ user, wantErr string }{
		{"", ""},
		{"1000", ""},
		{"1000:100", ""},
		{"65535:65535", ""},
		{"builder", "numeric uid[:gid]"},
		{"1000:staff", "numeric uid[:gid]"},
		{"-1", "numeric uid[:gid]"},
		{"65536", "ids above 65535"},
		{"1000:70000", "ids above 65535"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "w.toml")
			if err := os.WriteFile(p, []byte("[run]\nuser = \""+tt.user+"\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			h, err := LoadHost(p, true)
			if tt.wantErr == "" {
				if err != nil || h.Run.User != tt.user {
					t.Fatalf("got %v, user %q", err, h.Run.User)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "run.user") {
				t.Fatalf("got %v, want an error about run.user containing %q", err, tt.wantErr)
			}
		})
	}
}

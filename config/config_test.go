package config

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// The commented example must say exactly what the built-in defaults are.
func TestExampleHostConfigIsTheDefaults(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the example shows the Linux defaults")
	}
	got, err := LoadHost("../contrib/worker.toml", true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := LoadHost(filepath.Join(t.TempDir(), "absent.toml"), false)
	got.path, want.path = "", ""
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("contrib/worker.toml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestHostConfigErrors(t *testing.T) {
	tests := []struct{ name, toml, want string }{
		{"unknown key", "data_dirr = \"/x\"\n", `unknown key "data_dirr"`},
		{"bad storage", "[storage]\nkind = \"nfs\"\n", "storage.kind"},
		{"hook stage", "[hooks.x]\nstage = \"during\"\ncommand = [\"/bin/true\"]\n", "stage"},
		{"hook relative", "[hooks.x]\nstage = \"post\"\ncommand = [\"true\"]\n", "absolute path"},
		{"tool relative", "[host_tools]\nx = \"opt/x\"\n", "absolute path"},
		{"bad duration", "[run]\nkill_grace = \"soon\"\n", "bad duration"},
		{"metrics listen without port", "[metrics]\nlisten = \"127.0.0.1\"\n", "metrics.listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "w.toml")
			os.WriteFile(p, []byte(tt.toml), 0o600)
			_, err := LoadHost(p, true)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := LoadHost(filepath.Join(t.TempDir(), "missing.toml"), true); err == nil {
		t.Fatal("an explicitly named missing config must be an error")
	}
}

func TestSaveRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "worker.toml")
	h, err := LoadHost(p, false)
	if err != nil {
		t.Fatal(err)
	}
	h.Server.Token = "secret"
	h.Server.Labels = map[string]string{"disk": "ssd"}
	if err := h.Save(); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600 (it holds a credential)", st.Mode().Perm())
	}
	back, err := LoadHost(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if back.Server.Token != "secret" || back.Server.Labels["disk"] != "ssd" {
		t.Fatalf("round trip lost data: %+v", back.Server)
	}
}

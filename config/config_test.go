package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
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
	got.Limits.explicit, want.Limits.explicit = nil, nil
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
		{"cache dir relative", "[caches.apt]\ndir = \"c\"\ntarget = \"/var/cache/apt/archives\"\n", "absolute dir"},
		{"cache bad name", "[caches.\"a b\"]\ndir = \"/c\"\ntarget = \"/c\"\n", "valid name"},
		{"cache target relative", "[caches.apt]\ndir = \"/c\"\ntarget = \"var/cache\"\n", "clean absolute path"},
		{"cache target root", "[caches.apt]\ndir = \"/c\"\ntarget = \"/\"\n", "clean absolute path"},
		{"cache target unclean", "[caches.apt]\ndir = \"/c\"\ntarget = \"/var/../out\"\n", "clean absolute path"},
		{"cache target kiln's", "[caches.apt]\ndir = \"/c\"\ntarget = \"/out/x\"\n", "kiln's"},
		{"cache max_size", "[caches.apt]\ndir = \"/c\"\ntarget = \"/c\"\nmax_size = \"lots\"\n", "bad size"},
		{"deny not a CIDR", "[network]\ndeny = [\"10.0.5.0\"]\n", `network deny "10.0.5.0": want an IPv4 network`},
		{"deny host bits", "[network]\ndeny = [\"10.0.5.1/24\"]\n", "did you mean 10.0.5.0/24"},
		{"deny IPv6", "[network]\ndeny = [\"fd00:ec2::254/128\"]\n", "IPv4 only"},
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

func TestLimits(t *testing.T) {
	load := func(t *testing.T, toml string) (*Host, error) {
		p := filepath.Join(t.TempDir(), "w.toml")
		if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
		return LoadHost(p, true)
	}
	t.Run("defaults bound every run", func(t *testing.T) {
		h, err := load(t, "")
		if err != nil {
			t.Fatal(err)
		}
		l := h.Limits
		if l.Memory <= 0 || l.Pids <= 0 || l.MemoryMax < l.Memory || l.PidsMax < l.Pids || l.CPUsMax <= 0 || l.DiskMax <= 0 {
			t.Fatalf("limits %+v: a default or maximum is unbounded", l)
		}
		lim, err := (&api.Job{}).LimitsOn(l.Defaults(), l.Max())
		if err != nil || lim.Memory != l.Memory || lim.Pids != l.Pids || lim.Disk != l.Disk || lim.Timeout != l.Timeout {
			t.Fatalf("a job asking nothing gets %+v (%v), want the defaults", lim, err)
		}
	})
	t.Run("a job over a maximum", func(t *testing.T) {
		h, err := load(t, "[limits]\nmemory_max = \"16GiB\"\npids_max = 100\npids = 50\n")
		if err != nil {
			t.Fatal(err)
		}
		j := &api.Job{Resources: api.Resources{Memory: 64 << 30}}
		_, err = j.LimitsOn(h.Limits.Defaults(), h.Limits.Max())
		if !errors.Is(err, api.ErrOverLimit) || !strings.Contains(err.Error(), "memory=64GiB (max 16GiB)") {
			t.Fatalf("err = %v", err)
		}
		j = &api.Job{Resources: api.Resources{Memory: 8 << 30}}
		if lim, err := j.LimitsOn(h.Limits.Defaults(), h.Limits.Max()); err != nil || lim.Memory != 8<<30 || lim.Pids != 50 {
			t.Fatalf("within the maxima: %+v, %v", lim, err)
		}
	})
	t.Run("old console_cap", func(t *testing.T) {
		h, err := load(t, "[run]\nconsole_cap = \"1MiB\"\n")
		if err != nil || h.Limits.Console != 1<<20 {
			t.Fatalf("console %d, %v; want [run] console_cap read", h.Limits.Console, err)
		}
	})
	for _, tt := range []struct{ name, toml, want string }{
		{"unbounded memory", "[limits]\nmemory = 0\n", "memory and pids must be set"},
		{"unbounded pids", "[limits]\npids = 0\n", "memory and pids must be set"},
		{"default over max", "[limits]\npids = 10\npids_max = 5\n", "pids=10 (max 5)"},
		{"negative", "[limits]\ncpus = -1.0\n", "negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := load(t, tt.toml); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

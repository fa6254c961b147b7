package worker

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/qemu"
)

// TestHostFacts gathers the facts of a real host (overlay storage in a temp
// data dir, one busybox image) with containerd running and without.
func TestHostFacts(t *testing.T) {
	testsupport.NeedRoot(t)
	addr := testsupport.StartContainerd(t)
	ctx := context.Background()

	newCfg := func(t *testing.T, containerd string) *config.Host {
		dir := t.TempDir()
		p := filepath.Join(dir, "worker.toml")
		toml := `data_dir = "` + dir + `"
[containerd]
address = "` + containerd + `"
[server]
slots = 3
labels = { disk = "ssd" }
[host_tools]
xtools = "/opt/kiln/xtools"
[hooks.lint]
stage = "post"
command = ["/usr/bin/lintian", "--info"]
`
		if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.LoadHost(p, true)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	kernel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	caps, err := qemu.Detect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		containerd string
		image      bool
		want       func(v string) bool // for the "containerd" fact
	}{
		{name: "containerd running", containerd: addr, image: true, want: func(v string) bool { return strings.HasPrefix(v, "1.") }},
		{name: "containerd unreachable", containerd: filepath.Join(t.TempDir(), "none.sock"), want: func(v string) bool { return v == "unreachable" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := newCfg(t, tt.containerd)
			var version string
			if tt.image {
				host, err := platform.Open(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				testsupport.Need(t, fileExists("/bin/busybox"), "/bin/busybox (apt-get install busybox-static)")
				snap, err := host.Images().Create(ctx, images.CreateOptions{Name: "bb", Method: "busybox", Quiet: true})
				host.Close()
				if err != nil {
					t.Fatal(err)
				}
				version = snap.Version
			}
			f := HostFacts(ctx, cfg, nil)
			want := map[string]string{
				"os":               "linux",
				"arch":             qemu.Native(),
				"kernel":           strings.TrimSpace(string(kernel)),
				"cpus":             strconv.Itoa(runtime.NumCPU()),
				"storage":          "overlay",
				"launcher":         "containerd",
				"slots":            "3",
				"label.disk":       "ssd",
				"host_tool.xtools": "/opt/kiln/xtools",
				"hook.lint":        "post: /usr/bin/lintian --info",
				"emulated_archs":   strings.Join(caps.Emulated, ","),
				"data_dir":         cfg.DataDir,
			}
			if tt.image {
				want["image.bb.arch"] = qemu.Native()
				want["image.bb.os"] = "linux"
				want["image.bb.snapshots"] = version
				want["images"] = "bb"
			}
			for k, v := range want {
				if f[k] != v {
					t.Errorf("fact %s = %q, want %q", k, f[k], v)
				}
			}
			if _, ok := f["image.bb.arch"]; ok != tt.image {
				t.Errorf("image facts present = %v, want %v", ok, tt.image)
			}
			for _, k := range []string{"memory_bytes", "data_dir_free_bytes"} {
				if n, err := strconv.ParseUint(f[k], 10, 64); err != nil || n == 0 {
					t.Errorf("fact %s = %q, want a positive byte count", k, f[k])
				}
			}
			if f["distro"] == "" || f["distro_version"] == "" {
				t.Errorf("distro %q version %q: want both from /etc/os-release", f["distro"], f["distro_version"])
			}
			if !tt.want(f["containerd"]) {
				t.Errorf("containerd fact %q", f["containerd"])
			}
			if !tt.image {
				// No container tier without containerd; with no qemu
				// either the host runs nothing, and says so, so that the
				// server does not take it for an older worker that runs
				// containers.
				if got := f["isolations"]; got != "none" && got != api.IsolationVM {
					t.Errorf("isolations fact %q, want none or vm", got)
				}
				if got := Isolations(f); got == nil || slices.Contains(got, api.IsolationContainer) {
					t.Errorf("Isolations = %#v, want a non-nil list without container", got)
				}
				return
			}
			// A running worker passes its own host: the probes through it
			// must say the same as through one opened for the call.
			host, err := platform.Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer host.Close()
			shared := HostFacts(ctx, cfg, host)
			for _, k := range []string{"images", "image.bb.arch", "image.bb.snapshots", "launcher", "containerd", "isolations"} {
				if shared[k] != f[k] {
					t.Errorf("with the worker's host, fact %s = %q, want %q", k, shared[k], f[k])
				}
			}
			if again := HostFacts(ctx, cfg, host); !tt.want(again["containerd"]) || again["images"] != "bb" {
				t.Errorf("a second call through the worker's host: containerd %q, images %q (did the first close it?)", again["containerd"], again["images"])
			}
		})
	}
}

func TestParseOSRelease(t *testing.T) {
	tests := []struct {
		name, in    string
		id, version string
	}{
		{"debian", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n", "debian", "12"},
		{"freebsd", "NAME=FreeBSD\nVERSION_ID=14.2\nID=freebsd\n", "freebsd", "14.2"},
		{"single quotes and comments", "# c\nID='ubuntu'\nVERSION_ID='24.04'\n", "ubuntu", "24.04"},
		{"no version", "ID=arch\n", "arch", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := parseOSRelease([]byte(tt.in))
			if r["ID"] != tt.id || r["VERSION_ID"] != tt.version {
				t.Fatalf("got ID %q VERSION_ID %q, want %q %q", r["ID"], r["VERSION_ID"], tt.id, tt.version)
			}
		})
	}
}

func TestMemTotal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want uint64
		ok   bool
	}{
		{"kB", "MemTotal:       24576000 kB\nMemFree: 1 kB\n", 24576000 * 1024, true},
		{"missing", "MemFree: 1 kB\n", 0, false},
		{"garbage", "MemTotal: lots kB\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, ok := memTotal([]byte(tt.in))
			if n != tt.want || ok != tt.ok {
				t.Fatalf("got %d %v, want %d %v", n, ok, tt.want, tt.ok)
			}
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

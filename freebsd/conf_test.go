package freebsd

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// owner is the data dir identity the tests' launcher works for.
const owner = "0123456789abcdef"

// owned is opts for owner, unless they name an owner of their own.
func owned(opts Options) Options {
	if opts.Owner == "" {
		opts.Owner = owner
	}
	return opts
}

func baseSpec() sandbox.Spec {
	return sandbox.Spec{
		RunID:    "r-20261121-0007",
		Root:     "/zroot/kiln/runs/r-20261121-0007",
		Arch:     "amd64",
		Args:     []string{"/bin/sh", "-c", "set -e\nuname -m > /out/arch.txt"},
		Env:      []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/bin", "HOME=/root", "KILN_RUN=r-20261121-0007"},
		Cwd:      "/work",
		Hostname: "r-20261121-0007",
		Mounts: []sandbox.Mount{
			{Source: "/var/lib/kiln/runs/r-20261121-0007/out", Target: "/out"},
			{Source: "/var/lib/kiln/runs/r-20261121-0007/work", Target: "/work"},
		},
	}
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("%s differs (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

// commands renders every argv the launcher would run for spec, one per
// line, so a golden file shows the whole life of the jail.
func commands(spec sandbox.Spec, opts Options) string {
	name := JailName(opts.Owner, spec.RunID)
	conf := ConfPath(opts, name)
	var b strings.Builder
	line := func(argv []string) { fmt.Fprintf(&b, "%q\n", argv) }
	if rules := RctlRules(name, spec.Resources); len(rules) > 0 {
		line(RctlAddArgv(rules))
	}
	line(CreateArgv(conf, name))
	line(JexecArgv(name, spec, opts.User))
	line(RemoveArgv(name, conf))
	line(RctlRemoveArgv(name))
	return b.String()
}

func TestJailConfRefusesBridge(t *testing.T) {
	spec := baseSpec()
	spec.Network = sandbox.NetworkBridge
	if _, err := JailConf(spec, owned(Options{})); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("bridge: %v, want ErrUnsupported", err)
	}
}

func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		spec func(*sandbox.Spec)
		opts Options
	}{
		{"network-off", func(*sandbox.Spec) {}, Options{}},
		{"network-on", func(s *sandbox.Spec) { s.Network = sandbox.NetworkHost }, Options{}},
		{"limits", func(s *sandbox.Spec) {
			s.MemoryBytes = 2 << 30
			s.CPUs = 1.5
			s.Pids = 4096
		}, Options{DevfsRuleset: 40, User: "build", Securelevel: 2, ConfDir: "/run/kiln"}},
		{"host-tools", func(s *sandbox.Spec) {
			s.Mounts = append(s.Mounts,
				sandbox.Mount{Source: "/usr/local/kiln/tools/cross-aarch64", Target: "/host/cross-aarch64", ReadOnly: true},
				sandbox.Mount{Source: "/usr/local/kiln/tools", Target: "/host", ReadOnly: true})
		}, Options{Allow: []string{"chflags", "mlock"}}},
		{"varied-user", func(s *sandbox.Spec) {
			s.User = "1000:1001"
			s.Cwd = "/work/build-b"
		}, Options{User: "build"}},
		{"inputs", func(s *sandbox.Spec) {
			s.Mounts = append([]sandbox.Mount{{Source: "/var/lib/kiln/runs/r-20261121-0007/in", Target: "/in", ReadOnly: true}}, s.Mounts...)
			s.Env = append(s.Env, "KILN_JOB=hello", "FOO=a b=c")
			s.Args = []string{"/bin/sh", "-c", "sha256 /in/hello_2.10-3.dsc > /out/sum"}
			s.Hostname = ""
		}, Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := baseSpec()
			tt.spec(&spec)
			opts := owned(tt.opts)
			conf, err := JailConf(spec, opts)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name+".conf", conf)
			golden(t, tt.name+".cmds", commands(spec, opts))
			if id, ok := RunIDFromConf([]byte(conf)); !ok || id != spec.RunID {
				t.Fatalf("RunIDFromConf = %q, %v", id, ok)
			}
			// Everything JailConf mounts is unmounted, /dev first, deepest
			// nullfs mount before its parent.
			targets := MountTargets([]byte(conf))
			if len(targets) != len(spec.Mounts)+1 || targets[0] != spec.Root+"/dev" {
				t.Fatalf("MountTargets = %v", targets)
			}
			for _, m := range spec.Mounts {
				if !slices.Contains(targets, spec.Root+m.Target) {
					t.Fatalf("MountTargets %v lacks %s", targets, m.Target)
				}
			}
			for i := 1; i < len(targets); i++ {
				for j := i + 1; j < len(targets); j++ {
					if strings.HasPrefix(targets[i], targets[j]+"/") {
						continue
					}
					if strings.HasPrefix(targets[j], targets[i]+"/") {
						t.Fatalf("%s unmounted before %s below it", targets[i], targets[j])
					}
				}
			}
		})
	}
}

func TestJailConfRejects(t *testing.T) {
	tests := []struct {
		name string
		spec func(*sandbox.Spec)
		opts Options
	}{
		{"empty run id", func(s *sandbox.Spec) { s.RunID = "" }, Options{}},
		{"run id with slash", func(s *sandbox.Spec) { s.RunID = "a/b" }, Options{}},
		{"relative root", func(s *sandbox.Spec) { s.Root = "zroot/x" }, Options{}},
		{"root /", func(s *sandbox.Spec) { s.Root = "/" }, Options{}},
		{"quote in root", func(s *sandbox.Spec) { s.Root = `/x";persist;"` }, Options{}},
		{"space in source", func(s *sandbox.Spec) { s.Mounts[0].Source = "/a b" }, Options{}},
		{"dotdot target", func(s *sandbox.Spec) { s.Mounts[0].Target = "/out/../../etc" }, Options{}},
		{"target /dev", func(s *sandbox.Spec) { s.Mounts[0].Target = "/dev/fd" }, Options{}},
		{"duplicate target", func(s *sandbox.Spec) { s.Mounts[1].Target = "/out" }, Options{}},
		{"bad hostname", func(s *sandbox.Spec) { s.Hostname = "a b" }, Options{}},
		{"bad env", func(s *sandbox.Spec) { s.Env = append(s.Env, "NOEQUALS") }, Options{}},
		{"relative cwd", func(s *sandbox.Spec) { s.Cwd = "work" }, Options{}},
		{"negative memory", func(s *sandbox.Spec) { s.MemoryBytes = -1 }, Options{}},
		{"bad allow", func(*sandbox.Spec) {}, Options{Allow: []string{"raw_sockets;\n\tpersist"}}},
		// '_' would let one owner's prefix start another's names.
		{"owner with _", func(*sandbox.Spec) {}, Options{Owner: "ab_cd"}},
		{"owner with -", func(*sandbox.Spec) {}, Options{Owner: "ab-cd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := baseSpec()
			tt.spec(&spec)
			if conf, err := JailConf(spec, owned(tt.opts)); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("accepted (err %v):\n%s", err, conf)
			}
		})
	}
}

func TestJailName(t *testing.T) {
	tests := []struct{ id, name, back string }{
		{"r-1", "kiln_0123456789abcdef_r_1", "r-1"},
		{"0193f2c4-7b1e-7c3a-9f00-1a2b3c4d5e6f", "kiln_0123456789abcdef_0193f2c4_7b1e_7c3a_9f00_1a2b3c4d5e6f", "0193f2c4-7b1e-7c3a-9f00-1a2b3c4d5e6f"},
		{"a.b", "kiln_0123456789abcdef_a_b", "a-b"}, // '.' would nest jails; the conf keeps the exact id
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if got := JailName(owner, tt.id); got != tt.name {
				t.Fatalf("JailName = %q, want %q", got, tt.name)
			}
			if !Owned(owner, tt.name) {
				t.Fatalf("Owned(%q) = false", tt.name)
			}
			if got := RunIDFromName(owner, tt.name); got != tt.back {
				t.Fatalf("RunIDFromName = %q, want %q", got, tt.back)
			}
		})
	}
}

func TestRctlRules(t *testing.T) {
	tests := []struct {
		name string
		r    sandbox.Resources
		want []string
	}{
		{"none", sandbox.Resources{Network: sandbox.NetworkHost}, nil},
		{"all", sandbox.Resources{MemoryBytes: 512 << 20, CPUs: 2, Pids: 100},
			[]string{"jail:kiln_x:memoryuse:deny=536870912", "jail:kiln_x:maxproc:deny=100", "jail:kiln_x:pcpu:deny=200"}},
		{"fractional cpu rounds up", sandbox.Resources{CPUs: 0.333}, []string{"jail:kiln_x:pcpu:deny=34"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RctlRules("kiln_x", tt.r); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// Reap and Start see only their owner's jails: another owner's (even one
// whose identity starts with this one's), an owner-less kiln_ jail of an
// older kiln, and jails kiln did not make are never listed.
func TestParseJlsNames(t *testing.T) {
	mine := []string{JailName(owner, "r-1"), JailName(owner, "r-2")}
	others := []string{
		JailName("fedcba9876543210", "r-1"),
		JailName(owner+"00", "r-3"),
		JailName("0123", "r-4"),
		"kiln_r_5",
		"kiln_" + owner + "_", // the prefix alone: no run
		"www", "poudriere_14amd64-default",
	}
	out := []byte(strings.Join([]string{others[0], mine[0], others[1], others[2], "", others[3], others[4], mine[1], others[5], others[6], ""}, "\n"))
	if got := ParseJlsNames(out, owner); !slices.Equal(got, mine) {
		t.Fatalf("ParseJlsNames(%q) = %q, want %q", out, got, mine)
	}
	for _, name := range others {
		if Owned(owner, name) {
			t.Errorf("Owned(%q) = true", name)
		}
	}
}

func TestParseZpoolFree(t *testing.T) {
	got, err := ParseZpoolFree([]byte("zroot\t96557137920\nbackup\t1024\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["zroot.free"] != "" || got["zpool.zroot.free"] != "96557137920" || got["zpool.backup.free"] != "1024" {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"zroot 12\n", "zroot\t12G\n"} {
		if _, err := ParseZpoolFree([]byte(bad)); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
}

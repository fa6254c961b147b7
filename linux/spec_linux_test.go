package linux

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
)

// generate applies specOpts to an empty spec, as containerd would, with
// no daemon: spec in, OCI spec out.
func generate(t *testing.T, spec sandbox.Spec, att *netcni.Attachment) (*oci.Spec, error) {
	t.Helper()
	opts, err := specOpts(spec, att, hardening{})
	if err != nil {
		return nil, err
	}
	ctx := namespaces.WithNamespace(context.Background(), "kiln-spec-test")
	var s oci.Spec
	for _, o := range opts {
		if err := o(ctx, nil, &containers.Container{ID: containerPrefix + spec.RunID}, &s); err != nil {
			t.Fatalf("spec option: %v", err)
		}
	}
	return &s, nil
}

func netnsOf(s *oci.Spec) (path string, own bool) {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path, true
		}
	}
	return "", false
}

func mountAt(s *oci.Spec, dst string) *specs.Mount {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == dst {
			return &s.Mounts[i]
		}
	}
	return nil
}

func TestSpecOpts(t *testing.T) {
	base := sandbox.Spec{RunID: "r1", Root: "/clone/r1", Args: []string{"sh", "-c", "true"}, Env: []string{"A=1"}}
	with := func(f func(*sandbox.Spec)) sandbox.Spec {
		s := base
		f(&s)
		return s
	}
	att := &netcni.Attachment{NetNS: "/run/netns/kiln-r1", ResolvConf: "/state/r1/resolv.conf", Addr: netip.MustParseAddr("10.121.0.2")}
	tests := []struct {
		name  string
		spec  sandbox.Spec
		att   *netcni.Attachment
		check func(t *testing.T, s *oci.Spec)
	}{
		{name: "defaults", spec: base, check: func(t *testing.T, s *oci.Spec) {
			if s.Root.Path != "/clone/r1" || s.Process.Cwd != "/" || s.Hostname != "r1" {
				t.Errorf("root %q cwd %q hostname %q", s.Root.Path, s.Process.Cwd, s.Hostname)
			}
			if !slices.Equal(s.Process.Env, []string{"A=1"}) || !slices.Equal(s.Process.Args, base.Args) {
				t.Errorf("env %v args %v", s.Process.Env, s.Process.Args)
			}
			if p, ok := netnsOf(s); !ok || p != "" {
				t.Errorf("network namespace %q (%v), want one of its own", p, ok)
			}
		}},
		{name: "user and limits", spec: with(func(s *sandbox.Spec) {
			s.User, s.MemoryBytes, s.CPUs, s.Pids, s.Cwd, s.Hostname = "1000:1000", 1<<30, 1.5, 64, "/w", "h"
		}), check: func(t *testing.T, s *oci.Spec) {
			if s.Process.User.UID != 1000 || s.Process.User.GID != 1000 || s.Process.Cwd != "/w" || s.Hostname != "h" {
				t.Errorf("user %+v cwd %q hostname %q", s.Process.User, s.Process.Cwd, s.Hostname)
			}
			r := s.Linux.Resources
			if *r.Memory.Limit != 1<<30 || *r.Memory.Swap != 1<<30 || *r.CPU.Quota != 150_000 || *r.CPU.Period != cfsPeriod || r.Pids.Limit != 64 {
				t.Errorf("resources %+v %+v %+v", r.Memory, r.CPU, r.Pids)
			}
		}},
		{name: "cpuset", spec: with(func(s *sandbox.Spec) { s.CPUSet = 1 }), check: func(t *testing.T, s *oci.Spec) {
			if c := s.Linux.Resources.CPU; c == nil || strings.Count(c.Cpus, ",") != 0 || c.Cpus == "" {
				t.Errorf("cpuset %+v, want one CPU", c)
			}
		}},
		{name: "mounts", spec: with(func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/runs/r1/in", Target: "/in", ReadOnly: true}, {Source: "/runs/r1/out", Target: "/out"}}
		}), check: func(t *testing.T, s *oci.Spec) {
			// Not recursive: a read-only rbind leaves submounts writable.
			if m := mountAt(s, "/in"); m == nil || !slices.Equal(m.Options[:2], []string{"bind", "ro"}) {
				t.Errorf("/in: %+v, want a plain read-only bind", m)
			}
			if m := mountAt(s, "/out"); m == nil || m.Source != "/runs/r1/out" || !slices.Equal(m.Options[:2], []string{"rbind", "rw"}) {
				t.Errorf("/out: %+v", m)
			}
		}},
		{name: "host network", spec: with(func(s *sandbox.Spec) { s.Network = sandbox.NetworkHost }), check: func(t *testing.T, s *oci.Spec) {
			if _, own := netnsOf(s); own {
				t.Error("a network namespace of its own, want the host's")
			}
		}},
		{name: "bridge network", spec: with(func(s *sandbox.Spec) { s.Network = sandbox.NetworkBridge }), att: att, check: func(t *testing.T, s *oci.Spec) {
			if p, _ := netnsOf(s); p != att.NetNS {
				t.Errorf("network namespace %q, want %q", p, att.NetNS)
			}
			if m := mountAt(s, "/etc/resolv.conf"); m == nil || m.Source != att.ResolvConf || !slices.Contains(m.Options, "ro") {
				t.Errorf("resolv.conf: %+v", m)
			}
			if s.Linux.Sysctl["net.ipv6.conf.all.disable_ipv6"] != "1" {
				t.Errorf("sysctls %v, want IPv6 off", s.Linux.Sysctl)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := generate(t, tt.spec, tt.att)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}

func TestSpecOptsInvalid(t *testing.T) {
	base := sandbox.Spec{RunID: "r1", Root: "/clone/r1", Args: []string{"true"}}
	tests := []struct {
		name string
		edit func(*sandbox.Spec)
	}{
		{"run ID", func(s *sandbox.Spec) { s.RunID = "r/1" }},
		{"relative root", func(s *sandbox.Spec) { s.Root = "clone" }},
		{"no command", func(s *sandbox.Spec) { s.Args = nil }},
		{"relative mount", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: "out", Target: "/out"}} }},
		{"network", func(s *sandbox.Spec) { s.Network = "wifi" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			tt.edit(&s)
			if _, err := specOpts(s, nil, hardening{}); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}

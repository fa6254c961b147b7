package linux

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// buildSysprobe builds testdata/sysprobe statically into root's /bin.
func buildSysprobe(t *testing.T, root string) {
	t.Helper()
	gobin := testsupport.NeedCommand(t, "go")
	cmd := exec.Command(gobin, "build", "-o", filepath.Join(root, "bin", "sysprobe"), "./testdata/sysprobe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sysprobe: %v\n%s", err, out)
	}
}

// tiers are the isolations the hostile-job suite runs in; gVisor's needs
// runsc (a failure under CI=true when missing).
func tiers(t *testing.T) []string {
	t.Helper()
	return []string{api.IsolationContainer, api.IsolationGVisor}
}

// hostileScript reports what a job that tries to break out learns and can
// do, one "key=value" line each.
const hostileScript = `
grep -E '^(Seccomp|CapEff):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo "uid_map=$(tr -s ' \t' ' ' </proc/self/uid_map | sed 's/^ //')"
unshare -U -r true 2>/dev/null && echo unshare=ok || echo unshare=refused
mknod /work/sda b 8 0 2>/dev/null && echo mknod_cmd=ok || echo mknod_cmd=refused
mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && echo mount_cmd=ok || echo mount_cmd=refused
/bin/sysprobe
echo "work_owner=$(stat -c %u:%g /work)"
echo "bin_owner=$(stat -c %u:%g /bin/busybox)"
echo "in_read=$(cat /in/hello)"
echo made >/out/made && echo out_write=ok
`

func TestHostileJob(t *testing.T) {
	c, _ := newLauncher(t)
	// A warm task is created long before its run and started later: it
	// must be as confined as a container started at once.
	const warm = api.IsolationContainer + "-warm"
	for _, tier := range append(tiers(t), warm) {
		t.Run(tier, func(t *testing.T) {
			mode := tier
			if tier == warm {
				tier = api.IsolationContainer
			}
			if tier == api.IsolationGVisor {
				testsupport.NeedCommand(t, "runsc")
			}
			spec, console := shSpec(t, hostileScript)
			spec.Isolation = tier
			buildSysprobe(t, spec.Root)
			if err := os.MkdirAll(filepath.Join(spec.Root, "work"), 0o755); err != nil {
				t.Fatal(err)
			}
			in, out := filepath.Join(t.TempDir(), "in"), filepath.Join(t.TempDir(), "out")
			for _, d := range []string{in, out} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(in, "hello"), []byte("hi"), 0o444); err != nil {
				t.Fatal(err)
			}
			spec.Mounts = []sandbox.Mount{{Source: in, Target: "/in", ReadOnly: true}, {Source: out, Target: "/out"}}
			var sb sandbox.Sandbox
			if mode == warm {
				sb = startWarm(t, c, spec, sandbox.Adoption{Hostname: "hostile"})
			} else {
				sb = start(t, c, spec)
			}
			if exit := wait(t, sb); exit.Code != 0 {
				t.Fatalf("exit %+v; console:\n%s", exit, console)
			}
			got := map[string]string{}
			for _, l := range strings.Split(console.String(), "\n") {
				if k, v, ok := strings.Cut(l, "="); ok {
					got[k] = v
				}
			}
			t.Logf("console:\n%s", console)
			wantSeccomp := "2"
			if tier == api.IsolationGVisor {
				// gVisor's own kernel answers; it reports no filter.
				wantSeccomp = "0"
			}
			if got["Seccomp"] != wantSeccomp {
				t.Errorf("Seccomp = %q, want %s", got["Seccomp"], wantSeccomp)
			}
			capEff, err := strconv.ParseUint(got["CapEff"], 16, 64)
			if err != nil {
				t.Fatalf("CapEff %q: %v", got["CapEff"], err)
			}
			for name, bit := range map[string]uint{"NET_RAW": 13, "MKNOD": 27, "SYS_ADMIN": 21, "SETFCAP": 31, "AUDIT_WRITE": 29} {
				if capEff&(1<<bit) != 0 {
					t.Errorf("CapEff %s has CAP_%s", got["CapEff"], name)
				}
			}
			if tier == api.IsolationContainer {
				if f := strings.Fields(got["uid_map"]); len(f) != 3 || f[1] == "0" {
					t.Errorf("uid_map %q: want root mapped to an unprivileged host uid", got["uid_map"])
				}
				if got["work_owner"] != "0:0" || got["bin_owner"] != "0:0" {
					t.Errorf("clone ownership inside: /work %s, /bin/busybox %s; want 0:0 (the image's)", got["work_owner"], got["bin_owner"])
				}
			}
			for _, k := range []string{"unshare", "mknod_cmd", "mount_cmd"} {
				if got[k] != "refused" {
					t.Errorf("%s = %q, want refused", k, got[k])
				}
			}
			for _, k := range []string{"keyctl", "add_key", "bpf", "userfaultfd", "perf_event_open", "unshare_user", "mount", "mknod"} {
				if v, ok := got[k]; !ok || v == "ok" {
					t.Errorf("%s = %q, want an error", k, v)
				}
			}
			if got["in_read"] != "hi" || got["out_write"] != "ok" {
				t.Errorf("/in read %q, /out write %q", got["in_read"], got["out_write"])
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			var st os.FileInfo
			if st, err = os.Lstat(filepath.Join(out, "made")); err != nil {
				t.Fatal(err)
			}
			if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 0 {
				t.Errorf("/out/made is owned by host uid %d, want 0", uid)
			}
		})
	}
}

// TestReapIDMapsOfDeadStart: a start that died after making its idmapped
// mounts and before its container existed leaves mounts and a range record;
// Reap removes the mounts (only once the run is not kept) and the next
// start takes the range back.
func TestReapIDMapsOfDeadStart(t *testing.T) {
	c, _ := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	spec, _ := shSpec(t, "true")
	out := t.TempDir()
	spec.Mounts = []sandbox.Mount{{Source: out, Target: "/out"}}
	id := containerPrefix + spec.RunID
	labels := map[string]string{}
	mount, _, settled, err := c.userns(c.nsCtx(ctx), id, &spec, labels)
	if err != nil {
		t.Fatal(err)
	}
	if err := mount(); err != nil {
		t.Fatal(err)
	}
	settled() // the start dies here
	dir := labels[LabelIDMaps]
	if mps, err := mounts.Below(dir); err != nil || len(mps) != 2 {
		t.Fatalf("mounts below %s: %v %v, want root and /out", dir, mps, err)
	}
	if err := c.Reap(ctx, func(run string) bool { return run == spec.RunID }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a kept run's idmapped mounts were reaped: %v", err)
	}
	if err := c.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("idmapped mounts of a dead start left: %v", err)
	}
	base := usernsOf(labels)
	rec := filepath.Join(UsernsDir, strconv.Itoa(int((base-usernsBase)/usernsSize)))
	if _, err := os.Stat(rec); err != nil {
		t.Fatalf("range record: %v", err)
	}
	// The next start sweeps the record of a container that does not exist.
	sb := start(t, c, func() sandbox.Spec { s, _ := shSpec(t, "true"); return s }())
	wait(t, sb)
	if b, err := os.ReadFile(rec); err == nil && strings.Contains(string(b), id) {
		t.Fatalf("range record of the dead start kept: %s", b)
	}
}

// TestSeccompArch: the profile admits the host's own syscall ABI, and a
// compat ABI only for an image that needs it.
func TestSeccompArch(t *testing.T) {
	tests := []struct {
		arch string
		want []specs.Arch
	}{
		{"amd64", []specs.Arch{specs.ArchX86_64}},
		{"arm64", []specs.Arch{specs.ArchX86_64}}, // emulated: qemu is a native binary
		{"i386", []specs.Arch{specs.ArchX86_64, specs.ArchX86}},
	}
	for _, tt := range tests {
		t.Run(tt.arch, func(t *testing.T) {
			s := &oci.Spec{Linux: &specs.Linux{Seccomp: &specs.LinuxSeccomp{
				Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}}}}
			if err := withSeccompArch(tt.arch)(context.Background(), nil, nil, s); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(s.Linux.Seccomp.Architectures, tt.want) {
				t.Fatalf("architectures %v, want %v", s.Linux.Seccomp.Architectures, tt.want)
			}
		})
	}
}

package linux

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestSeccompCompiledOnce: a sandbox whose filter kiln compiled once and
// kiln-sandbox-init installed runs under exactly the filter runc builds
// from the same profile in every container, as its only filter, and the
// spec runc gets has no profile left to build. A launcher whose init
// binary is unusable (here a dynamic one) leaves the profile to runc.
func TestSeccompCompiledOnce(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	type result struct {
		prog     []byte
		args     []string
		hasSpecs bool
	}
	sleeper := func(t *testing.T, initPath string) result {
		t.Helper()
		c, _ := newLauncherOn(t, addr, ContainerdConfig{SandboxInit: initPath})
		spec, _ := shSpec(t, "exec sleep 60")
		sb := start(t, c, spec).(*containerdSandbox)
		pid := int(sb.task.Pid())
		// Until the job runs: the init is kiln's until it execs.
		deadline := time.Now().Add(testTimeout)
		for {
			cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(string(cmd), "sleep\x00") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the job never ran: cmdline %q", cmd)
			}
			time.Sleep(10 * time.Millisecond)
		}
		prog, err := seccompFilterOf(pid)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(c.nsCtx(context.Background()), testTimeout)
		defer cancel()
		s, err := sb.ctr.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(spec.Root, sandboxInitMount)); err == nil {
			t.Errorf("the init's mountpoint is left in the root after the sandbox")
		}
		return result{prog: prog, args: s.Process.Args, hasSpecs: s.Linux.Seccomp != nil}
	}
	compiled := sleeper(t, testsupport.SandboxInit(t))
	byRunc := sleeper(t, "/bin/true")
	if compiled.hasSpecs || compiled.args[0] != sandboxInitMount+"/init" {
		t.Errorf("with kiln-sandbox-init: seccomp in spec %v, args %q; want none, the init first", compiled.hasSpecs, compiled.args)
	}
	if !byRunc.hasSpecs || byRunc.args[0] != "/bin/sh" {
		t.Errorf("with a dynamic init binary: seccomp in spec %v, args %q; want runc's profile, the job's args", byRunc.hasSpecs, byRunc.args)
	}
	if len(compiled.prog) < 8*100 {
		t.Errorf("compiled filter is %d instructions, too few for containerd's allow-list", len(compiled.prog)/8)
	}
	if !bytes.Equal(compiled.prog, byRunc.prog) {
		t.Errorf("the compiled filter (%d instructions) differs from runc's (%d)", len(compiled.prog)/8, len(byRunc.prog)/8)
	}
}

// TestRemoveDeadProbes: a probe directory outlives a prober killed while
// probing; the next launcher removes it, and leaves the live ones.
func TestRemoveDeadProbes(t *testing.T) {
	testsupport.NeedRoot(t)
	if err := prepareRunDir(); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		prober string
		kept   bool
	}{
		{"dead prober", strconv.Itoa(dead.Process.Pid), false},
		{"live prober", strconv.Itoa(os.Getpid()), true},
		{"no pid", "x", true},
	}
	f := &seccompFilters{runc: testsupport.NeedCommand(t, "runc"), log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	dirs := make([]string, len(tests))
	for i, tt := range tests {
		dir, err := os.MkdirTemp(runDir, probePrefix+tt.prober+"-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		dirs[i] = dir
	}
	f.removeDeadProbes()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := os.Stat(dirs[i])
			if kept := err == nil; kept != tt.kept {
				t.Errorf("kept %v, want %v", kept, tt.kept)
			}
		})
	}
}

// TestSeccompFilterKept: a profile is probed once per boot and version of
// the init binary, not once per launcher: a later launcher, here of
// another owner, reuses the filter and never starts a probe.
func TestSeccompFilterKept(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	for i, owner := range []string{"test-kept-a-" + runID(t), "test-kept-b-" + runID(t)} {
		c, _ := newLauncherOn(t, addr, ContainerdConfig{Owner: owner, SandboxInit: testsupport.SandboxInit(t)})
		spec, console := shSpec(t, "grep Seccomp: /proc/self/status")
		if exit := run(t, c, spec); exit.Code != 0 || !strings.Contains(console.String(), "Seccomp:\t2") {
			t.Fatalf("launcher %d: exit %+v, console %q", i, exit, console.String())
		}
		// The first may find the filter of an earlier test; the second
		// must.
		if got := c.filters.probes.Load(); i == 1 && got != 0 {
			t.Errorf("launcher %d: %d probes, want none", i, got)
		}
	}
}

// TestSeccompInitRepaired: an init directory removed under a launcher is
// made again, and its filter compiled again, by the next sandbox.
func TestSeccompInitRepaired(t *testing.T) {
	// A binary of its own content, so a directory no other test uses.
	bin, err := os.ReadFile(testsupport.SandboxInit(t))
	if err != nil {
		t.Fatal(err)
	}
	initPath := filepath.Join(t.TempDir(), SandboxInitName)
	if err := os.WriteFile(initPath, append(bin, []byte(runID(t))...), 0o755); err != nil {
		t.Fatal(err)
	}
	c, _ := newLauncherWith(t, ContainerdConfig{SandboxInit: initPath})
	t.Cleanup(func() { os.RemoveAll(c.filters.dir) })
	for i, wantProbes := range []int32{1, 2} {
		spec, console := shSpec(t, "grep Seccomp: /proc/self/status")
		if exit := run(t, c, spec); exit.Code != 0 || !strings.Contains(console.String(), "Seccomp:\t2") {
			t.Fatalf("run %d: exit %+v, console %q", i, exit, console.String())
		}
		if got := c.filters.probes.Load(); got != wantProbes {
			t.Errorf("run %d: %d probes in all, want %d", i, got, wantProbes)
		}
		if err := os.RemoveAll(c.filters.dir); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSeccompStatus: host facts say how sandboxes get their filter,
// including a profile whose probe failed.
func TestSeccompStatus(t *testing.T) {
	done := func(err error) *compiledFilter {
		e := &compiledFilter{done: make(chan struct{}), name: "k.bpf", err: err}
		close(e.done)
		return e
	}
	tests := []struct {
		name string
		c    *Containerd
		want string
	}{
		{"no init binary", &Containerd{filtersErr: errors.New("kiln-sandbox-init not found")}, "built by runc in every container (kiln-sandbox-init not found)"},
		{"compiled", &Containerd{filters: &seccompFilters{byKey: map[string]*compiledFilter{"a": done(nil)}}}, "compiled once per profile"},
		{"a probe failed", &Containerd{filters: &seccompFilters{byKey: map[string]*compiledFilter{"a": done(nil), "b": done(errors.New("ptrace: EPERM"))}}}, "probe failed (ptrace: EPERM)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.SeccompStatus(); !strings.Contains(got, tt.want) {
				t.Errorf("SeccompStatus() = %q, want it to contain %q", got, tt.want)
			}
		})
	}
}

// TestSeccompInitPersonality: the variations aslr and kernel reach the
// job as personality flags through kiln-sandbox-init, which sets them
// before the job's filter (containerd's profile refuses them); a sandbox whose
// profile runc installs (no usable init) runs without them and says so
// on its console.
func TestSeccompInitPersonality(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	withInit, _ := newLauncherOn(t, addr, ContainerdConfig{SandboxInit: testsupport.SandboxInit(t)})
	byRunc, _ := newLauncherOn(t, addr, ContainerdConfig{SandboxInit: "/bin/true"})
	var host unix.Utsname
	if err := unix.Uname(&host); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(host.Release[:])
	const note = "not applied: only " + SandboxInitName + " sets personality flags"
	tests := []struct {
		name            string
		c               *Containerd
		noASLR, uname26 bool
		persona         string
		uname26Release  bool
		wantNote        string // "" for none
	}{
		{"none", withInit, false, false, "00000000", false, ""},
		{"aslr", withInit, true, false, "00040000", false, ""},
		{"kernel", withInit, false, true, "00020000", true, ""},
		{"both", withInit, true, true, "00060000", true, ""},
		{"runc's profile: not applied, said", byRunc, true, true, "00000000", false, "variation aslr, kernel: " + note},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, console := shSpec(t, `cat /proc/self/personality; uname -r`)
			spec.NoASLR, spec.Uname26 = tt.noASLR, tt.uname26
			if exit := run(t, tt.c, spec); exit.Code != 0 {
				t.Fatalf("exit %d:\n%s", exit.Code, console.String())
			}
			lines := strings.Split(console.String(), "\n")
			var noted string
			if strings.HasPrefix(lines[0], "[kiln] ") {
				noted, lines = lines[0], lines[1:]
			}
			wantRelease := release
			if tt.uname26Release {
				wantRelease = "2.6." // 2.6.(60+minor), the rest of the release after it
			}
			if lines[0] != tt.persona || !strings.HasPrefix(lines[1], wantRelease) || (tt.uname26Release && lines[1] == release) {
				t.Errorf("personality %q, uname -r %q; want %q, %q...\n%s", lines[0], lines[1], tt.persona, wantRelease, console.String())
			}
			if !strings.Contains(noted, tt.wantNote) || (tt.wantNote == "" && noted != "") {
				t.Errorf("note %q, want %q", noted, tt.wantNote)
			}
		})
	}
}

// Package launchertest is the contract test of sandbox.Launcher (with its
// Sandbox and, where offered, Attacher): every launcher (containerd with
// runc, gVisor, the VM tier, FreeBSD jails) runs the same suite against a
// real instance, as sandbox/storagetest does for storage backends.
//
// The suite asserts what sandbox.go documents, nothing a launcher does on
// its own: exit codes, signals, a Wait that times out, the Kill that lets
// the host collect /out, ErrExists for a run left by a previous process,
// reaping of this owner's sandboxes only, and reattaching. Its jobs are
// /bin/sh scripts using sh, sleep and kill only; every sandbox costs one
// start, so cases share sandboxes where the contract allows (a VM boot is
// seconds under TCG).
package launchertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// guard bounds every wait of the suite so that a broken launcher fails a
// test instead of hanging it; it is no measurement (a TCG guest on a
// loaded host takes tens of seconds to boot).
const guard = 5 * time.Minute

// Owner is one data dir that launchers are opened for.
type Owner struct {
	// ID is the data dir's identity (16 hex digits, as platform.Identity).
	ID string
	// Dir is the data dir, empty when the owner is made; a launcher keeps
	// whatever state it has beneath it.
	Dir string
}

// Config says how to open the launcher under test and what it offers.
type Config struct {
	// Open returns a launcher for o, as a kiln process of o's data dir
	// opens it at start-up, and registers its closing on t. Opened again
	// for the same owner, it is that process restarted: it must find the
	// sandboxes the earlier launcher started. Launchers of two owners
	// must share the host's backend (one containerd), so that each can
	// be checked to leave the other's sandboxes alone.
	Open func(t *testing.T, o Owner) sandbox.Launcher
	// Root makes a fresh root filesystem for one sandbox with /bin/sh,
	// sleep and kill. nil: testsupport.BusyboxRootfs.
	Root func(t testing.TB) string
	// Isolation is set on every Spec (a launcher that offers several
	// tiers runs the suite once per tier).
	Isolation string
	// Skip names the cases this launcher does not run, each with why (the
	// doc that says the launcher does not offer it). A launcher that is
	// not a sandbox.Attacher must skip "Reattach".
	Skip map[string]string
}

// Run checks every point of the sandbox.Launcher contract that cfg's
// launcher offers. Each case opens launchers for owners of its own.
func Run(t *testing.T, cfg Config) {
	if cfg.Root == nil {
		cfg.Root = testsupport.BusyboxRootfs
	}
	cases := []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"ExitCode", testExitCode},
		{"KilledBySignal", testKilledBySignal},
		{"SignalTerm", testSignalTerm},
		{"SignalKill", testSignalKill},
		{"Kill", testKill},
		{"Timeout", testTimeout},
		{"Collect", testCollect},
		{"Restart", testRestart},
		{"Ended", testEnded},
		{"OwnersApart", testOwnersApart},
		{"Reattach", testReattach},
	}
	known := map[string]bool{}
	for _, tc := range cases {
		known[tc.name] = true
	}
	for name := range cfg.Skip {
		if !known[name] {
			t.Errorf("Config.Skip names %q, which is no case of the suite", name)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if why, ok := cfg.Skip[tc.name]; ok {
				t.Skipf("skipped by the launcher's Config.Skip: %s", why)
			}
			tc.fn(t, &suite{cfg: cfg})
		})
	}
}

// suite is one case's view of the launcher under test.
type suite struct {
	cfg Config
}

// open opens a launcher for o. Every sandbox the suite starts is deleted
// on cleanup, and a failed Start leaves nothing, so nothing is reaped.
func (s *suite) open(t *testing.T, o Owner) sandbox.Launcher {
	t.Helper()
	return s.cfg.Open(t, o)
}

// newOwner makes an owner with a fresh data dir.
func newOwner(t *testing.T) Owner {
	return Owner{ID: randomHex(t, 8), Dir: t.TempDir()}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// spec is a sandbox running script with /bin/sh in a fresh root. Its run
// id is unique across test processes: runc's state and the cgroups are
// the host's.
func (s *suite) spec(t *testing.T, script string) (sandbox.Spec, *testsupport.Console) {
	t.Helper()
	console := &testsupport.Console{}
	return sandbox.Spec{
		RunID:     "t" + randomHex(t, 5),
		Root:      s.cfg.Root(t),
		Args:      []string{"/bin/sh", "-c", script},
		Env:       []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"},
		Cwd:       "/",
		Isolation: s.cfg.Isolation,
		Console:   console,
	}, console
}

// start starts spec on l and deletes the sandbox on cleanup. The context
// Start gets ends as Start returns: it bounds Start, not the sandbox's
// life, and every case checks that the sandbox lives on.
func start(t *testing.T, l sandbox.Launcher, spec sandbox.Spec) sandbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	sb, err := l.Start(ctx, spec)
	cancel()
	if err != nil {
		t.Fatalf("Start(%s): %v", spec.RunID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if err := sb.Delete(ctx); err != nil {
			t.Errorf("cleanup: Delete(%s): %v", spec.RunID, err)
		}
	})
	return sb
}

func wait(t *testing.T, sb sandbox.Sandbox) sandbox.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	exit, err := sb.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait(%s): %v", sb.ID(), err)
	}
	return exit
}

// waitEnded waits for a sandbox that was reaped or deleted under it:
// the contract says it is gone, not how its Wait reports that.
func waitEnded(t *testing.T, sb sandbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if _, err := sb.Wait(ctx); errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s still running", sb.ID())
	}
}

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

const (
	// sleeper runs until SIGTERM, which it answers with exit 3: a
	// sandbox that does so was running when it got the signal. The trap
	// interrupts the wait builtin at once.
	sleeper = `trap 'echo got-term; exit 3' TERM; sleep 1000 & echo up; wait`
	// stubborn says it got SIGTERM and goes on until killed.
	stubborn = `trap 'echo got-term' TERM; echo up; while :; do sleep 1000 & wait; done`
)

// startSleeper starts a sleeper and waits until it is up.
func (s *suite) startSleeper(t *testing.T, l sandbox.Launcher) (sandbox.Sandbox, sandbox.Spec, *testsupport.Console) {
	t.Helper()
	spec, console := s.spec(t, sleeper)
	sb := start(t, l, spec)
	console.WaitFor(t, "up\n", guard)
	return sb, spec, console
}

// stillRuns checks that a sleeper is running: it answers SIGTERM.
func stillRuns(t *testing.T, sb sandbox.Sandbox, console *testsupport.Console) {
	t.Helper()
	if err := sb.Signal(ctxOf(t), sandbox.SIGTERM); err != nil {
		t.Fatalf("Signal(%s, SIGTERM): %v", sb.ID(), err)
	}
	if exit := wait(t, sb); exit != (sandbox.Exit{Code: 3}) {
		t.Errorf("%s: exit %+v after SIGTERM, want code 3 (it was not running?); console:\n%s", sb.ID(), exit, console)
	}
}

// wantNoAttach checks that at has nothing to attach to for runID (what
// says which run that is).
func wantNoAttach(t *testing.T, at sandbox.Attacher, runID, what string) {
	t.Helper()
	ctx := ctxOf(t)
	if sb, err := at.Attach(ctx, runID, nil); !errors.Is(err, errdefs.ErrNotFound) {
		if err == nil {
			_ = sb.Delete(ctx) // best effort: the test has failed already
		}
		t.Errorf("Attach to %s = %v, want ErrNotFound", what, err)
	}
}

var killed = sandbox.Exit{Code: 137, Signal: "SIGKILL"}

// Wait returns the job's exit status, once its console output is all in.
func testExitCode(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	spec, console := s.spec(t, `echo to-stdout; echo to-stderr >&2; exit 42`)
	if exit := wait(t, start(t, l, spec)); exit != (sandbox.Exit{Code: 42}) {
		t.Errorf("exit %+v, want code 42", exit)
	}
	for _, want := range []string{"to-stdout\n", "to-stderr\n"} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("console lacks %q: %q", want, console)
		}
	}
}

// A job whose shell died of SIGKILL exits 128+9, and Exit names it.
func testKilledBySignal(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	spec, console := s.spec(t, `sh -c 'kill -KILL $$'; exit $?`)
	if exit := wait(t, start(t, l, spec)); exit != killed {
		t.Errorf("exit %+v, want %+v; console:\n%s", exit, killed, console)
	}
}

// SIGTERM reaches the job; signalling or killing an ended sandbox is no
// error.
func testSignalTerm(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	sb, _, console := s.startSleeper(t, l)
	stillRuns(t, sb, console)
	// Wait does not promise that the console has every byte yet (the
	// Sandbox contract), so the trap's line is waited for, not asserted.
	console.WaitFor(t, "got-term\n", time.Minute)
	ctx := ctxOf(t)
	if err := sb.Signal(ctx, sandbox.SIGTERM); err != nil {
		t.Errorf("Signal after exit: %v", err)
	}
	if err := sb.Kill(ctx); err != nil {
		t.Errorf("Kill after exit: %v", err)
	}
}

// Signal(SIGKILL) ends a job that could trap anything else.
func testSignalKill(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	sb, _, console := s.startSleeper(t, l)
	if err := sb.Signal(ctxOf(t), sandbox.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if exit := wait(t, sb); exit != killed {
		t.Errorf("exit %+v, want %+v; console:\n%s", exit, killed, console)
	}
}

// Kill ends every process of a running sandbox, the main one with it.
func testKill(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	spec, console := s.spec(t, `sleep 1000 & sleep 1000 & echo up; sleep 1000`)
	sb := start(t, l, spec)
	console.WaitFor(t, "up\n", guard)
	if err := sb.Kill(ctxOf(t)); err != nil {
		t.Fatal(err)
	}
	if exit := wait(t, sb); exit != killed {
		t.Errorf("exit %+v, want %+v; console:\n%s", exit, killed, console)
	}
}

// A run's timeout as the runner drives it: Wait gives up with its context
// and the sandbox keeps running; SIGTERM reaches the job, which goes on;
// Kill ends it. Delete is idempotent.
func testTimeout(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	spec, console := s.spec(t, stubborn)
	sb := start(t, l, spec)
	console.WaitFor(t, "up\n", guard)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if exit, err := sb.Wait(expired); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with an ended context = %+v, %v; want context.Canceled", exit, err)
	}
	ctx := ctxOf(t)
	if err := sb.Signal(ctx, sandbox.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// It answers after the Wait gave up: it was still running.
	console.WaitFor(t, "got-term\n", guard)
	if err := sb.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if exit := wait(t, sb); exit != killed {
		t.Errorf("exit %+v, want %+v; console:\n%s", exit, killed, console)
	}
	for i := range 2 {
		if err := sb.Delete(ctx); err != nil {
			t.Errorf("Delete #%d: %v", i+1, err)
		}
	}
}

// Once Wait has returned and Kill returned nil, the host reads what the
// job wrote into its mounts: Collect finds all of it.
func testCollect(t *testing.T, s *suite) {
	l := s.open(t, newOwner(t))
	out := t.TempDir()
	spec, console := s.spec(t, `mkdir -p /out/sub && echo result >/out/result && echo nested >/out/sub/file`)
	spec.Mounts = []sandbox.Mount{{Source: out, Target: "/out"}}
	sb := start(t, l, spec)
	if exit := wait(t, sb); exit != (sandbox.Exit{}) {
		t.Fatalf("exit %+v; console:\n%s", exit, console)
	}
	if err := sb.Kill(ctxOf(t)); err != nil {
		t.Fatalf("Kill after exit: %v", err)
	}
	staged := filepath.Join(t.TempDir(), "staged")
	arts, err := sandbox.Collect(out, staged, nil, sandbox.ArtifactCap{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, a := range arts {
		paths = append(paths, a.Path)
	}
	if want := []string{"result", "sub/file"}; !slices.Equal(slices.Sorted(slices.Values(paths)), want) {
		t.Errorf("collected %v, want %v", paths, want)
	}
	for p, want := range map[string]string{"result": "result\n", "sub/file": "nested\n"} {
		if b, err := os.ReadFile(filepath.Join(staged, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
}

// A restarted process finds the sandboxes of the one before it: Start of
// a run that is still there fails with ErrExists and leaves it alone;
// Reap deletes those keep rejects, after which the run starts again.
func testRestart(t *testing.T, s *suite) {
	o := newOwner(t)
	before := s.open(t, o)
	reaped, reapedSpec, _ := s.startSleeper(t, before)
	kept, keptSpec, keptConsole := s.startSleeper(t, before)

	after := s.open(t, o)
	ctx := ctxOf(t)
	for _, spec := range []sandbox.Spec{reapedSpec, keptSpec} {
		spec.Console = &testsupport.Console{}
		if sb, err := after.Start(ctx, spec); !errors.Is(err, errdefs.ErrExists) {
			if err == nil {
				_ = sb.Delete(ctx) // best effort: the test has failed already
			}
			t.Fatalf("Start(%s) after a restart = %v, want ErrExists", spec.RunID, err)
		}
	}
	if err := after.Reap(ctx, func(run string) bool { return run == keptSpec.RunID }); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	waitEnded(t, reaped)
	if err := reaped.Delete(ctx); err != nil {
		t.Errorf("Delete of a reaped sandbox: %v", err)
	}

	again, console := s.spec(t, `echo again`)
	again.RunID = reapedSpec.RunID
	if exit := wait(t, start(t, after, again)); exit != (sandbox.Exit{}) || console.String() != "again\n" {
		t.Errorf("Start after Reap: exit %+v, console %q", exit, console)
	}
	stillRuns(t, kept, keptConsole)
}

// A sandbox whose job ended while no process was there to see it (its
// launcher's process died): a restarted Attacher finds nothing to attach
// to, Reap deletes it, and the run starts again.
func testEnded(t *testing.T, s *suite) {
	o := newOwner(t)
	spec, _ := s.spec(t, `exit 0`)
	wait(t, start(t, s.open(t, o), spec))

	after := s.open(t, o)
	ctx := ctxOf(t)
	if at, ok := after.(sandbox.Attacher); ok {
		wantNoAttach(t, at, spec.RunID, "an ended run")
	}
	if err := after.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Errorf("Reap of an ended sandbox: %v", err)
	}
	again, console := s.spec(t, `echo again`)
	again.RunID = spec.RunID
	if exit := wait(t, start(t, after, again)); exit != (sandbox.Exit{}) || console.String() != "again\n" {
		t.Errorf("Start after Reap: exit %+v, console %q", exit, console)
	}
}

// Reap and Attach of one owner leave another owner's sandboxes alone.
func testOwnersApart(t *testing.T, s *suite) {
	a := s.open(t, newOwner(t))
	b := s.open(t, newOwner(t))
	mine, _, _ := s.startSleeper(t, a)
	theirs, theirSpec, theirConsole := s.startSleeper(t, b)

	ctx := ctxOf(t)
	if at, ok := a.(sandbox.Attacher); ok {
		wantNoAttach(t, at, theirSpec.RunID, "another owner's sandbox")
	}
	if err := a.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	waitEnded(t, mine)
	stillRuns(t, theirs, theirConsole)
}

// An Attacher's restarted process takes over a running sandbox: signals
// and its exit; there is nothing to attach to for an unknown run.
func testReattach(t *testing.T, s *suite) {
	o := newOwner(t)
	before := s.open(t, o)
	_, spec, firstConsole := s.startSleeper(t, before)

	at, ok := s.open(t, o).(sandbox.Attacher)
	if !ok {
		t.Fatal("the launcher is no sandbox.Attacher: say why in Config.Skip")
	}
	ctx := ctxOf(t)
	wantNoAttach(t, at, "t"+randomHex(t, 5), "an unknown run")
	sb, err := at.Attach(ctx, spec.RunID, &testsupport.Console{})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	t.Cleanup(func() {
		if err := sb.Delete(context.Background()); err != nil {
			t.Errorf("Delete: %v", err)
		}
	})
	// What the job writes from now on may still reach the first
	// launcher's console: that launcher lives on in this process, where a
	// restarted one's predecessor is dead. The worker's
	// TestWorkerKilledMidRun checks the console across a real restart.
	stillRuns(t, sb, firstConsole)
}

package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/errdefs"
)

// shHook is a hook running script with the host's /bin/sh.
func shHook(name string, stage Stage, script string) Hook {
	return Hook{Name: name, Stage: stage, Command: []string{"/bin/sh", "-c", script}}
}

// journal is a file that hooks and the fake launcher append lines to, so a
// test can see the order things happened in.
type journal string

func newJournal(t *testing.T) journal { return journal(filepath.Join(t.TempDir(), "journal")) }

func (j journal) add(t *testing.T, line string) {
	f, err := os.OpenFile(string(j), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	fmt.Fprintln(f, line)
	f.Close()
}

func (j journal) lines(t *testing.T) []string {
	b, err := os.ReadFile(string(j))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// record is a hook script line appending "<name>:<what>" to the journal.
func (j journal) record(name, what string) string {
	return fmt.Sprintf("echo %s:%s >> %s", name, what, string(j))
}

// outDir is the host side of the sandbox's /out: a directory of the clone.
func outDir(spec Spec) string { return filepath.Join(spec.Root, "out") }

// exitingStarter is a fake launcher start that journals, lets do act on the
// spec (write into /out, inspect the clone), then exits with code.
func exitingStarter(t *testing.T, j journal, code int, do func(Spec)) (func(context.Context, Spec) (Sandbox, error), *fakeSandbox) {
	sb := &fakeSandbox{exit: make(chan Exit, 2)}
	return func(ctx context.Context, spec Spec) (Sandbox, error) {
		j.add(t, "start")
		if do != nil {
			do(spec)
		}
		sb.exit <- Exit{Code: code}
		return sb, nil
	}, sb
}

func TestHooksOrderAndEnvironment(t *testing.T) {
	j := newJournal(t)
	start, _ := exitingStarter(t, j, 7, nil)
	r, st := newFakeRunner(t, start)
	out := t.TempDir()
	// Each hook journals the variables it sees, and whether the clone
	// still exists.
	envScript := func(name string) string {
		return j.record(name, "stage=$KILN_STAGE") + "; " +
			j.record(name, "run=$KILN_RUN") + "; " +
			j.record(name, "job=$KILN_JOB") + "; " +
			j.record(name, "exit=${KILN_EXIT-unset}") + "; " +
			j.record(name, "artifacts=${KILN_ARTIFACTS-unset}") + "; " +
			j.record(name, "cwd=$([ \"$PWD\" != / ] && [ -d \"$PWD\" ] && echo tmp)") + "; " +
			j.record(name, "stdin=$(wc -c < /dev/stdin)") + "; " +
			j.record(name, "clone=$([ -d \"$KILN_CLONE/work\" ] && echo present)") + "; " +
			j.record(name, "token=${KILN_TOKEN-unset}")
	}
	t.Setenv("KILN_TOKEN", "secret")
	hooks := []Hook{
		shHook("c1", StageCleanup, envScript("c1")),
		shHook("p1", StagePre, envScript("p1")),
		shHook("p2", StagePre, j.record("p2", "ran")),
		shHook("q1", StagePost, envScript("q1")),
	}
	res, err := r.Run(context.Background(), Request{RunID: "h-1", Job: "jb", Snapshot: "i@1", Script: "true", OutDir: out, Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	got := j.lines(t)
	want := []string{
		"p1:stage=pre", "p1:run=h-1", "p1:job=jb", "p1:exit=unset", "p1:artifacts=unset", "p1:cwd=tmp", "p1:stdin=0", "p1:clone=present", "p1:token=unset",
		"p2:ran",
		"start",
		"q1:stage=post", "q1:run=h-1", "q1:job=jb", "q1:exit=7", "q1:artifacts=" + out, "q1:cwd=tmp", "q1:stdin=0", "q1:clone=present", "q1:token=unset",
		"c1:stage=cleanup", "c1:run=h-1", "c1:job=jb", "c1:exit=7", "c1:artifacts=unset", "c1:cwd=tmp", "c1:stdin=0", "c1:clone=present", "c1:token=unset",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("journal:\n got %q\nwant %q", got, want)
	}
	var names []string
	for _, c := range res.Checks {
		if c.Failed() {
			t.Errorf("check %+v failed", c)
		}
		names = append(names, c.Name+"/"+string(c.Stage))
	}
	if want := []string{"p1/pre", "p2/pre", "q1/post", "c1/cleanup"}; !slices.Equal(names, want) {
		t.Fatalf("checks %v, want %v", names, want)
	}
	if res.ExitCode() != 7 {
		t.Fatalf("exit code %d, want the job's 7", res.ExitCode())
	}
	if clones, _ := st.List(context.Background()); len(clones) != 0 {
		t.Fatalf("clone left behind: %v", clones)
	}
}

func TestPreHookPreparesClone(t *testing.T) {
	var seen string
	start, _ := exitingStarter(t, newJournal(t), 0, func(spec Spec) {
		b, _ := os.ReadFile(filepath.Join(spec.Root, "etc", "prepared"))
		seen = string(b)
	})
	r, _ := newFakeRunner(t, start)
	hooks := []Hook{shHook("prep", StagePre, `mkdir -p "$KILN_CLONE/etc" && echo by-hook > "$KILN_CLONE/etc/prepared"`)}
	if _, err := r.Run(context.Background(), Request{RunID: "h-2", Snapshot: "i@1", Script: "true", Hooks: hooks}); err != nil {
		t.Fatal(err)
	}
	if seen != "by-hook\n" {
		t.Fatalf("sandbox saw %q in the clone, want what the pre hook wrote", seen)
	}
}

func TestFailedPreHookStopsTheRun(t *testing.T) {
	tests := []struct {
		name string
		hook Hook
		want string // in the check's Err
	}{
		{"exit code", shHook("gate", StagePre, "echo refusing; exit 4"), "exit status 4"},
		{"timeout", Hook{Name: "gate", Stage: StagePre, Command: []string{"/bin/sleep", "300"}, Timeout: 50 * time.Millisecond}, "timed out after 50ms"},
		{"missing command", Hook{Name: "gate", Stage: StagePre, Command: []string{"/nonexistent/hook"}}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := newJournal(t)
			started := false
			r, st := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) {
				started = true
				return nil, errors.New("must not start")
			})
			hooks := []Hook{
				tt.hook,
				shHook("after", StagePre, j.record("after", "ran")),
				shHook("post", StagePost, j.record("post", "ran")),
				shHook("clean", StageCleanup, j.record("clean", "clone=$([ -d \"$KILN_CLONE\" ] && echo present)")+"; "+j.record("clean", "exit=${KILN_EXIT-unset}")),
			}
			res, err := r.Run(context.Background(), Request{RunID: "h-3", Snapshot: "i@1", Script: "true", OutDir: t.TempDir(), Hooks: hooks})
			if !errors.Is(err, ErrHookFailed) {
				t.Fatalf("want ErrHookFailed, got %v", err)
			}
			if started {
				t.Fatal("sandbox started after a failed pre hook")
			}
			if got, want := j.lines(t), []string{"clean:clone=present", "clean:exit=unset"}; !slices.Equal(got, want) {
				t.Fatalf("journal %q, want only the cleanup hook %q", got, want)
			}
			if len(res.Checks) != 2 || res.Checks[0].Name != "gate" || !strings.Contains(res.Checks[0].Err, tt.want) || res.Checks[1].Name != "clean" || res.Checks[1].Failed() {
				t.Fatalf("checks %+v: want failed gate (%q) then clean", res.Checks, tt.want)
			}
			if clones, _ := st.List(context.Background()); len(clones) != 0 {
				t.Fatalf("clone left behind: %v", clones)
			}
			console, _ := os.ReadFile(res.ConsolePath)
			if !strings.Contains(string(console), "[kiln] hook gate (pre) ") {
				t.Fatalf("console has no note of the failed hook:\n%s", console)
			}
		})
	}
}

func TestFailedPostHookKeepsArtifactsAndExitCode(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	start, _ := exitingStarter(t, newJournal(t), 3, func(spec Spec) {
		os.WriteFile(filepath.Join(outDir(spec), "result.txt"), []byte("built\n"), 0o644)
	})
	r, _ := newFakeRunner(t, start)
	out := t.TempDir()
	script := fmt.Sprintf(`test -f "$KILN_ARTIFACTS/result.txt" && cp "$KILN_ARTIFACTS/result.txt" %s
echo "W: something is off"
echo "E: and on stderr" >&2
printf 'no newline'
exit 5`, marker)
	hooks := []Hook{shHook("lint", StagePost, script), shHook("fine", StagePost, "true")}
	res, err := r.Run(context.Background(), Request{RunID: "h-4", Snapshot: "i@1", Script: "true", OutDir: out, Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(marker); string(b) != "built\n" {
		t.Fatalf("post hook did not see the collected artifact: marker %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "result.txt")); string(b) != "built\n" {
		t.Fatalf("artifact lost after the failed post hook: %q", b)
	}
	if res.ExitCode() != 3 {
		t.Fatalf("exit code %d, want the job's own 3", res.ExitCode())
	}
	failed := res.FailedChecks()
	if len(failed) != 1 || failed[0] != (Check{Name: "lint", Stage: StagePost, ExitCode: 5, Err: "exit status 5"}) {
		t.Fatalf("failed checks %+v, want lint exit 5", failed)
	}
	if len(res.Checks) != 2 || res.Checks[1].Name != "fine" || res.Checks[1].Failed() {
		t.Fatalf("a failed post hook must not stop the next one: %+v", res.Checks)
	}
	console, _ := os.ReadFile(res.ConsolePath)
	for _, want := range []string{
		"[hook lint] W: something is off\n",
		"[hook lint] E: and on stderr\n",
		"[hook lint] no newline\n",
		"[kiln] hook lint (post) exited 5\n",
		"[kiln] hook fine (post) exited 0\n",
	} {
		if !strings.Contains(string(console), want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
}

func TestCleanupHookAlwaysRuns(t *testing.T) {
	tests := []struct {
		name     string
		start    func(sb *fakeSandbox) (Sandbox, error)
		timeout  time.Duration
		cancel   bool
		wantExit string
		wantPost bool
	}{
		{name: "job timeout", timeout: 20 * time.Millisecond, wantExit: "124", wantPost: true,
			start: func(sb *fakeSandbox) (Sandbox, error) { return sb, nil }},
		{name: "cancel", cancel: true, wantExit: "143",
			start: func(sb *fakeSandbox) (Sandbox, error) { return sb, nil }},
		{name: "start fails", wantExit: "unset",
			start: func(sb *fakeSandbox) (Sandbox, error) { return nil, errors.New("no runtime") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := newJournal(t)
			sb := &fakeSandbox{exit: make(chan Exit, 2)}
			r, st := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) { return tt.start(sb) })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				// Cancel once the job is running: the pre hook fires it.
				r.Launcher = &fakeLauncher{start: func(ctx context.Context, s Spec) (Sandbox, error) {
					cancel()
					return tt.start(sb)
				}}
			}
			hooks := []Hook{
				shHook("post", StagePost, j.record("post", "ran")),
				shHook("clean", StageCleanup, j.record("clean", "exit=${KILN_EXIT-unset}")+"; "+j.record("clean", "clone=$([ -d \"$KILN_CLONE\" ] && echo present)")),
			}
			res, _ := r.Run(ctx, Request{RunID: "h-5", Snapshot: "i@1", Script: "true", Timeout: tt.timeout, OutDir: t.TempDir(), Hooks: hooks})
			want := []string{"clean:exit=" + tt.wantExit, "clean:clone=present"}
			if tt.wantPost {
				want = append([]string{"post:ran"}, want...)
			}
			if got := j.lines(t); !slices.Equal(got, want) {
				t.Fatalf("journal %q, want %q", got, want)
			}
			if n := len(res.Checks); n == 0 || res.Checks[n-1].Name != "clean" || res.Checks[n-1].Failed() {
				t.Fatalf("checks %+v: want a successful cleanup last", res.Checks)
			}
			if clones, _ := st.List(context.Background()); len(clones) != 0 {
				t.Fatalf("clone left behind: %v", clones)
			}
			if started := tt.wantExit != "unset"; started && !sb.deleted {
				t.Fatal("sandbox not deleted")
			}
		})
	}
}

func TestHookTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The background child would outlive its shell if only the shell were
	// killed; it also holds the output pipe open.
	h := Hook{Name: "slow", Stage: StagePost, Timeout: 100 * time.Millisecond,
		Command: []string{"/bin/sh", "-c", "sleep 300 & echo $! > " + pidFile + "; wait"}}
	var console strings.Builder
	c := runHook(context.Background(), h, hookContext{runID: "r", workDir: t.TempDir()}, &console)
	if c.ExitCode != -1 || c.Err != "timed out after 100ms" {
		t.Fatalf("check %+v, want a timeout", c)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The kill is synchronous but reaping the orphan is init's business:
	// wait for that, bounded so that a survivor fails instead of hanging.
	for deadline := time.Now().Add(30 * time.Second); !processGone(pid); {
		if time.Now().After(deadline) {
			t.Fatalf("hook's child %d survived the hook's timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processGone: no such process, or only a zombie waiting for its reaper.
func processGone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

func TestRunRefusesBadHookBeforeClone(t *testing.T) {
	r, st := newFakeRunner(t, nil)
	for _, h := range []Hook{
		{Name: "rel", Stage: StagePost, Command: []string{"lintian"}},
		{Name: "empty", Stage: StagePost},
		{Name: "stage", Stage: "during", Command: []string{"/bin/true"}},
	} {
		t.Run(h.Name, func(t *testing.T) {
			_, err := r.Run(context.Background(), Request{RunID: "h-6", Snapshot: "i@1", Script: "true", Hooks: []Hook{h}})
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("want errdefs.ErrInvalid, got %v", err)
			}
			if len(st.m) != 0 {
				t.Fatal("clone made for a run with a bad hook")
			}
		})
	}
}

func TestSelectHooks(t *testing.T) {
	defined := map[string]Hook{
		"lintian": {Stage: StagePost, Command: []string{"/usr/bin/lintian"}},
		"rpmlint": {Stage: StagePost, Command: []string{"/usr/bin/rpmlint"}},
		"seed":    {Stage: StagePre, Command: []string{"/usr/local/bin/seed"}},
		"wipe":    {Stage: StageCleanup, Command: []string{"/usr/local/bin/wipe"}},
	}
	tests := []struct {
		name               string
		pre, post, cleanup []string
		want               []string
		wantErr            error
	}{
		{name: "none"},
		{name: "job order per stage", pre: []string{"seed"}, post: []string{"rpmlint", "lintian"}, cleanup: []string{"wipe"},
			want: []string{"seed/pre", "rpmlint/post", "lintian/post", "wipe/cleanup"}},
		{name: "undefined", post: []string{"build-compare"}, wantErr: errdefs.ErrNotFound},
		{name: "wrong stage", pre: []string{"lintian"}, wantErr: errdefs.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs, err := SelectHooks(defined, tt.pre, tt.post, tt.cleanup)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			var got []string
			for _, h := range hs {
				got = append(got, h.Name+"/"+string(h.Stage))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLineWriter(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{"whole lines", []string{"a\nb\n"}, "> a\n> b\n"},
		{"split line", []string{"he", "llo\nwor", "ld\n"}, "> hello\n> world\n"},
		{"no final newline", []string{"x\ny"}, "> x\n> y\n"},
		{"empty line", []string{"\n"}, "> \n"},
		{"overlong line", []string{strings.Repeat("z", maxHookLine+1)}, "> " + strings.Repeat("z", maxHookLine) + "\n> z\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sb strings.Builder
			lw := &lineWriter{w: &sb, prefix: "> "}
			for _, w := range tt.writes {
				if n, err := lw.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			lw.flush()
			if got := sb.String(); got != tt.want {
				t.Fatalf("got %q, want %q", short(got), short(tt.want))
			}
		})
	}
}

// short keeps failure messages readable when a test writes long lines.
func short(s string) string {
	if len(s) <= 80 {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)...%s", s[:40], len(s)-80, s[len(s)-40:])
}

// TestHookConsole: a sandboxed hook's stdout and stderr, written at once,
// reach the console as whole lines with the hook's prefix, and a last line
// without newline comes out on flush.
func TestHookConsole(t *testing.T) {
	var console bytes.Buffer
	w, flush := HookConsole(&console, "diffoscope")
	var wg sync.WaitGroup
	for _, s := range []string{"out", "err"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				_, _ = w.Write([]byte(s + "-a "))
				_, _ = w.Write([]byte(s + "-b\n"))
			}
		}()
	}
	wg.Wait()
	_, _ = w.Write([]byte("tail"))
	flush()
	lines := strings.Split(strings.TrimSuffix(console.String(), "\n"), "\n")
	if len(lines) != 401 || lines[400] != "[hook diffoscope] tail" {
		t.Fatalf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
	for _, l := range lines[:400] {
		if !strings.HasPrefix(l, "[hook diffoscope] ") {
			t.Fatalf("line without the prefix: %q", l)
		}
	}
}

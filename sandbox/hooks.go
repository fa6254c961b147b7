package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/errdefs"
)

// Stage is the point in a run's life at which a hook runs.
type Stage string

const (
	// StagePre hooks run once the clone exists and before the sandbox
	// starts; they may prepare the clone. The first failing one fails the
	// run before it starts.
	StagePre Stage = "pre"
	// StagePost hooks run after the job ended and its artifacts were
	// collected (not after a cancel). A failure is a failed check; the
	// artifacts and the job's exit code stay.
	StagePost Stage = "post"
	// StageCleanup hooks run last, whatever happened before (failed pre
	// hook, failed start, timeout, cancel), while the clone still exists.
	StageCleanup Stage = "cleanup"
)

// DefaultHookTimeout bounds a hook whose definition sets no timeout.
const DefaultHookTimeout = 10 * time.Minute

// hookWaitDelay is how long a hook's output is still read after it exited
// or was killed: a process that escaped its process group and holds the
// pipe open must not hang the run.
const hookWaitDelay = 5 * time.Second

// ErrHookFailed is wrapped by the error of a run whose pre hook failed.
var ErrHookFailed = errors.New("hook failed")

// Hook is an admin-defined command that runs on the host, outside the
// sandbox. Hooks come from the host config only; a job merely names them.
type Hook struct {
	Name    string
	Stage   Stage
	Command []string      // absolute path first
	Timeout time.Duration // 0: DefaultHookTimeout
}

func (h Hook) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return DefaultHookTimeout
}

func (h Hook) validate() error {
	switch h.Stage {
	case StagePre, StagePost, StageCleanup:
	default:
		return fmt.Errorf("hook %q: stage %q: want pre, post or cleanup: %w", h.Name, h.Stage, errdefs.ErrInvalid)
	}
	if len(h.Command) == 0 || !filepath.IsAbs(h.Command[0]) {
		return fmt.Errorf("hook %q: command must start with an absolute path: %w", h.Name, errdefs.ErrInvalid)
	}
	return nil
}

// Check is how one hook of a run ended.
type Check struct {
	Name  string
	Stage Stage
	// ExitCode is the hook's exit status; -1 when it did not exit by
	// itself (timeout, cancel, killed, could not start).
	ExitCode int
	// Err says what went wrong ("exit status 1", "timed out after 10s");
	// empty when the hook succeeded.
	Err string
}

// Failed reports whether the hook failed.
func (c Check) Failed() bool { return c.Err != "" }

// FailedChecks returns the checks of hooks that failed, in the order they ran.
func (r Result) FailedChecks() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Failed() {
			out = append(out, c)
		}
	}
	return out
}

// SelectHooks returns the hooks a job names, per stage in the job's order,
// from those the host defines (keyed by name; Name is filled in from the
// key). A name the host does not define, or defines for another stage, is
// an error wrapping errdefs.ErrNotFound or errdefs.ErrInvalid: a job can only pick from
// what the admin configured.
func SelectHooks(defined map[string]Hook, pre, post, cleanup []string) ([]Hook, error) {
	var out []Hook
	for _, st := range []struct {
		stage Stage
		names []string
	}{{StagePre, pre}, {StagePost, post}, {StageCleanup, cleanup}} {
		for _, n := range st.names {
			h, ok := defined[n]
			if !ok {
				return nil, fmt.Errorf("%s hook %q is not defined on this host: %w", st.stage, n, errdefs.ErrNotFound)
			}
			if h.Stage != st.stage {
				return nil, fmt.Errorf("hook %q is named as %s, but this host defines it as a %s hook: %w", n, st.stage, h.Stage, errdefs.ErrInvalid)
			}
			h.Name = n
			if err := h.validate(); err != nil {
				return nil, err
			}
			out = append(out, h)
		}
	}
	return out, nil
}

// hookContext is what a hook is told about its run through the environment.
type hookContext struct {
	runID, job string
	clone      string // clone root; "" when no clone was made
	artifacts  string // collected artifacts dir; post only
	exit       string // the job's exit code; "" when it never ran to an end
	workDir    string // parent of each hook's temp cwd
	extra      map[string]string
}

func (hc hookContext) env(stage Stage, cwd string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	// Deliberately not the daemon's whole environment: it may hold the
	// worker's credential (KILN_TOKEN).
	env := []string{
		"PATH=" + path,
		"HOME=" + cwd,
		"TMPDIR=" + cwd,
		"KILN_RUN=" + hc.runID,
		"KILN_JOB=" + hc.job,
		"KILN_STAGE=" + string(stage),
		"KILN_CLONE=" + hc.clone,
	}
	if stage == StagePost && hc.artifacts != "" {
		env = append(env, "KILN_ARTIFACTS="+hc.artifacts)
	}
	if stage != StagePre && hc.exit != "" {
		env = append(env, "KILN_EXIT="+hc.exit)
	}
	for _, k := range slices.Sorted(maps.Keys(hc.extra)) {
		env = append(env, k+"="+hc.extra[k])
	}
	return env
}

// RunHook runs one admin-defined hook outside a run's sandbox lifecycle
// (the worker's diffoscope task uses it), exactly as a run's hooks run:
// stdin /dev/null, a fresh temp cwd under workDir ("" for the system's),
// output to console with a "[hook NAME] " prefix per line, killed with its
// process group on its timeout, on ctx's cancel and once it exits. env is
// added to the hook's minimal environment (KILN_STAGE, PATH, HOME,
// TMPDIR) and its keys win over those; the daemon's own environment is
// never passed on. Safe for concurrent use.
func RunHook(ctx context.Context, h Hook, env map[string]string, workDir string, console io.Writer) Check {
	hc := hookContext{runID: env["KILN_RUN"], job: env["KILN_JOB"], workDir: workDir, extra: env}
	return runHook(ctx, h, hc, console)
}

// hooksOf returns the hooks of stage, in request order.
func hooksOf(hooks []Hook, stage Stage) []Hook {
	var out []Hook
	for _, h := range hooks {
		if h.Stage == stage {
			out = append(out, h)
		}
	}
	return out
}

// runStage runs every hook of stage in order; a pre stage stops at the
// first failure. ctx cancels the hook that is running (its process group
// is killed) and skips the rest.
func runStage(ctx context.Context, stage Stage, hooks []Hook, hc hookContext, spool *Spool) []Check {
	var checks []Check
	for _, h := range hooksOf(hooks, stage) {
		if ctx.Err() != nil {
			checks = append(checks, Check{Name: h.Name, Stage: stage, ExitCode: -1, Err: "not run: " + ctx.Err().Error()})
			spool.Notef("hook %s (%s) not run: %v", h.Name, stage, ctx.Err())
			continue
		}
		c := runHook(ctx, h, hc, spool)
		checks = append(checks, c)
		switch {
		case !c.Failed():
			spool.Notef("hook %s (%s) exited 0", h.Name, stage)
		case c.ExitCode >= 0:
			spool.Notef("hook %s (%s) exited %d", h.Name, stage, c.ExitCode)
		default:
			spool.Notef("hook %s (%s) failed: %s", h.Name, stage, c.Err)
		}
		if c.Failed() && stage == StagePre {
			break
		}
	}
	return checks
}

// runHook runs one hook on the host: stdin /dev/null, cwd a fresh temp dir,
// output into console with a "[hook NAME] " prefix on every line, in its own
// process group, which is killed on timeout or cancel and once the hook
// exits, so that a hook cannot leave processes behind.
func runHook(ctx context.Context, h Hook, hc hookContext, console io.Writer) Check {
	c := Check{Name: h.Name, Stage: h.Stage, ExitCode: -1}
	if err := h.validate(); err != nil {
		c.Err = err.Error()
		return c
	}
	cwd, err := os.MkdirTemp(hc.workDir, "hook-"+h.Name+"-")
	if err != nil {
		c.Err = fmt.Sprintf("hook work dir: %v", err)
		return c
	}
	defer os.RemoveAll(cwd)

	hctx, cancel := context.WithTimeout(ctx, h.timeout())
	defer cancel()
	out := &lineWriter{w: console, prefix: "[hook " + h.Name + "] "}
	cmd := exec.CommandContext(hctx, h.Command[0], h.Command[1:]...)
	cmd.Dir = cwd
	cmd.Env = hc.env(h.Stage, cwd)
	cmd.Stdout, cmd.Stderr = out, out // one writer: exec serialises the writes
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = hookWaitDelay
	err = cmd.Run()
	if cmd.Process != nil {
		_ = killGroup(cmd.Process.Pid)
	}
	out.flush()

	var ee *exec.ExitError
	switch {
	case err == nil:
		c.ExitCode = 0
	case errors.Is(hctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		c.Err = fmt.Sprintf("timed out after %s", h.timeout())
	case ctx.Err() != nil:
		c.Err = "cancelled"
	case errors.As(err, &ee) && ee.Exited():
		c.ExitCode = ee.ExitCode()
		c.Err = "exit status " + strconv.Itoa(c.ExitCode)
	default:
		c.Err = err.Error()
	}
	return c
}

// killGroup SIGKILLs the process group led by pid. ESRCH (the group is
// already gone) is not an error.
func killGroup(pid int) error {
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// maxHookLine bounds how much of a line without newline is buffered before
// it is written out anyway.
const maxHookLine = 64 << 10

// lineWriter prefixes every line written through it and writes whole lines
// to w, one Write per line, so that hook output never interleaves mid-line
// with kiln's own notes. Not safe for concurrent use (exec.Cmd serialises
// writes when Stdout and Stderr are the same writer).
type lineWriter struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			for len(l.buf) >= maxHookLine {
				l.emit(l.buf[:maxHookLine])
				l.buf = l.buf[maxHookLine:]
			}
			return len(p), nil
		}
		l.emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
}

// HookConsole returns a writer that puts hook name's output into console
// as a hook's output on the host goes: a "[hook NAME] " prefix on every
// line, one Write per line. Unlike a host hook's, it is safe for
// concurrent writes (a sandbox's stdout and stderr are copied apart).
// flush writes out a last line without newline; call it once the writes
// are over.
func HookConsole(console io.Writer, name string) (w io.Writer, flush func()) {
	l := &syncLineWriter{lw: lineWriter{w: console, prefix: "[hook " + name + "] "}}
	return l, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lw.flush()
	}
}

type syncLineWriter struct {
	mu sync.Mutex
	lw lineWriter
}

func (l *syncLineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lw.Write(p)
}

// flush writes out a last line that had no newline.
func (l *lineWriter) flush() {
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = nil
	}
}

func (l *lineWriter) emit(line []byte) {
	b := make([]byte, 0, len(l.prefix)+len(line)+1)
	b = append(b, l.prefix...)
	b = append(b, line...)
	b = append(b, '\n')
	_, _ = l.w.Write(b)
}

package freebsd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Jails is the FreeBSD sandbox.Launcher: one persistent jail per run, made
// from a generated jail.conf, limited through rctl(8), the job run in it
// with jexec(8). Safe for concurrent use: every call works on its own jail
// and conf file.
type Jails struct {
	opts Options
}

var _ sandbox.Launcher = (*Jails)(nil)

// NewJails returns a launcher of opts.Owner; it creates opts.ConfDir
// (mode 0700).
func NewJails(opts Options) (*Jails, error) {
	opts = opts.withDefaults()
	if err := checkOwner(opts.Owner); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.ConfDir, 0o700); err != nil {
		return nil, fmt.Errorf("jail conf dir: %w", err)
	}
	opts.Logger = opts.Logger.With("component", "jail")
	return &Jails{opts: opts}, nil
}

// Start creates the jail for spec and starts spec.Args in it. ctx bounds
// the creation only; on error nothing is left (jail, rules, conf).
func (j *Jails) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	conf, err := JailConf(spec, j.opts)
	if err != nil {
		return nil, err
	}
	name := JailName(j.opts.Owner, spec.RunID)
	s := &jail{j: j, name: name, conf: ConfPath(j.opts, name), done: make(chan struct{})}
	if exists, err := j.exists(ctx, name); err != nil {
		return nil, err
	} else if exists {
		return nil, fmt.Errorf("%w: jail %s", errdefs.ErrExists, name)
	}
	if err := s.start(ctx, spec, conf); err != nil {
		if derr := s.remove(context.WithoutCancel(ctx)); derr != nil {
			j.opts.Logger.Warn("cleanup after failed start", "jail", name, "err", derr)
		}
		return nil, err
	}
	return s, nil
}

func (s *jail) start(ctx context.Context, spec sandbox.Spec, conf string) error {
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write jail conf: %w", err)
	}
	for _, m := range spec.Mounts {
		if err := mkdirInside(spec.Root, m.Target); err != nil {
			return err
		}
	}
	if err := mkdirInside(spec.Root, "/dev"); err != nil {
		return err
	}
	if rules := RctlRules(s.name, spec.Resources); len(rules) > 0 {
		// Rules name the jail, so added before it exists they bind its
		// first process too.
		if racct, err := racctEnabled(ctx); err != nil {
			return err
		} else if racct {
			if _, err := run(ctx, RctlAddArgv(rules)...); err != nil {
				return err
			}
		} else {
			s.j.opts.Logger.Warn("resource limits NOT enforced: racct is disabled; set kern.racct.enable=1 in /boot/loader.conf and reboot",
				"jail", s.name, "limits", strings.Join(rules, " "))
		}
	}
	if _, err := run(ctx, CreateArgv(s.conf, s.name)...); err != nil {
		return err
	}
	argv := JexecArgv(s.name, spec, s.j.opts.User)
	cmd := exec.Command(argv[0], argv[1:]...)
	console := spec.Console
	if console == nil {
		console = io.Discard
	}
	cmd.Stdout, cmd.Stderr = console, console
	// Its own process group, so Signal reaches what the script started
	// and a signal to the worker's group does not reach the job.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("jexec: %w", err)
	}
	s.cmd = cmd
	go func() {
		err := cmd.Wait()
		s.exit, s.waitErr = exitOf(cmd, err)
		close(s.done)
	}()
	return nil
}

// mkdirInside makes target inside root without following a symlink that
// the image (or an earlier job) planted to point a mount outside the clone.
func mkdirInside(root, target string) error {
	p := root
	for _, c := range strings.Split(strings.Trim(target, "/"), "/") {
		p = filepath.Join(p, c)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("jail mount point: %w", err)
			}
		case err != nil:
			return fmt.Errorf("jail mount point: %w", err)
		case fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir():
			return fmt.Errorf("%w: jail mount point %s is not a plain directory", errdefs.ErrInvalid, p)
		}
	}
	return nil
}

// Reap removes every jail of this owner whose run keep rejects, and the
// conf files and rctl rules of its runs whose jail is already gone.
// Another owner's jails (their names carry their owner) are never touched.
func (j *Jails) Reap(ctx context.Context, keep func(runID string) bool) error {
	out, err := run(ctx, "jls", "name")
	if err != nil {
		return err
	}
	var errs []error
	seen := map[string]bool{}
	for _, name := range ParseJlsNames(out, j.opts.Owner) {
		seen[name] = true
		if keep(j.runID(name)) {
			continue
		}
		s := &jail{j: j, name: name, conf: ConfPath(j.opts, name)}
		if err := s.remove(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	confs, err := filepath.Glob(filepath.Join(j.opts.ConfDir, NamePrefix+"*.conf"))
	if err != nil {
		return err
	}
	for _, c := range confs {
		name := strings.TrimSuffix(filepath.Base(c), ".conf")
		if !Owned(j.opts.Owner, name) || seen[name] || keep(j.runID(name)) {
			continue
		}
		s := &jail{j: j, name: name, conf: c}
		if err := s.remove(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (j *Jails) runID(name string) string {
	if data, err := os.ReadFile(ConfPath(j.opts, name)); err == nil {
		if id, ok := RunIDFromConf(data); ok {
			return id
		}
	}
	return RunIDFromName(j.opts.Owner, name)
}

func (j *Jails) exists(ctx context.Context, name string) (bool, error) {
	out, err := run(ctx, "jls", "name")
	if err != nil {
		return false, err
	}
	for _, n := range ParseJlsNames(out, j.opts.Owner) {
		if n == name {
			return true, nil
		}
	}
	return false, nil
}

// jail is one run's jail.
type jail struct {
	j    *Jails
	name string
	conf string
	cmd  *exec.Cmd

	done    chan struct{} // closed when the jexec'd process was reaped
	exit    sandbox.Exit
	waitErr error

	removeMu sync.Mutex
}

func (s *jail) ID() string { return s.name }

func (s *jail) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-s.done:
		return s.exit, s.waitErr
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
}

// Signal sends sig to the job's process group (jexec execs the job in its
// own process, so the group is the job's).
func (s *jail) Signal(ctx context.Context, sig sandbox.Signal) error {
	n, ok := signals[sig]
	if !ok {
		return fmt.Errorf("%w: signal %q", errdefs.ErrInvalid, sig)
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, n); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal jail %s: %w", s.name, err)
	}
	return nil
}

// Kill removes the jail: the kernel kills every process in it, including
// those that left the job's process group.
func (s *jail) Kill(ctx context.Context) error {
	exists, err := s.j.exists(ctx, s.name)
	if err != nil || !exists {
		return err
	}
	_, err = run(ctx, RemoveArgv(s.name, s.confIfPresent())...)
	return err
}

// Delete removes the jail, its mounts, its rctl rules and its conf file.
func (s *jail) Delete(ctx context.Context) error {
	err := s.remove(ctx)
	if s.done != nil && err == nil {
		select {
		case <-s.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

// remove is idempotent: each step tolerates what is already gone.
func (s *jail) remove(ctx context.Context) error {
	s.removeMu.Lock()
	defer s.removeMu.Unlock()
	var errs []error
	conf, _ := os.ReadFile(s.conf)
	if exists, err := s.j.exists(ctx, s.name); err != nil {
		errs = append(errs, err)
	} else if exists {
		if _, err := run(ctx, RemoveArgv(s.name, s.confIfPresent())...); err != nil {
			errs = append(errs, err)
		}
	}
	// jail -r unmounts what the conf mounted; a failed or conf-less removal
	// may leave some, and a stale mount would keep the clone busy.
	for _, t := range MountTargets(conf) {
		if err := syscall.Unmount(t, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
		}
	}
	if racct, err := racctEnabled(ctx); err == nil && racct {
		// rctl -r of a jail without rules is an error worth ignoring.
		if _, err := run(ctx, RctlRemoveArgv(s.name)...); err != nil {
			s.j.opts.Logger.Debug("rctl -r", "jail", s.name, "err", err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(s.conf); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *jail) confIfPresent() string {
	if _, err := os.Stat(s.conf); err == nil {
		return s.conf
	}
	return ""
}

var signals = map[sandbox.Signal]syscall.Signal{
	sandbox.SIGTERM: syscall.SIGTERM,
	sandbox.SIGKILL: syscall.SIGKILL,
	"SIGINT":        syscall.SIGINT,
	"SIGHUP":        syscall.SIGHUP,
	"SIGQUIT":       syscall.SIGQUIT,
}

// exitOf is the job's Exit. The job runs under jexec's sh wrapper, so a
// job that signal n killed mostly shows as an exit with 128+n, which
// names the signal as a signal that ended jexec itself does.
func exitOf(cmd *exec.Cmd, err error) (sandbox.Exit, error) {
	if cmd.ProcessState == nil {
		return sandbox.Exit{}, fmt.Errorf("jexec: %w", err)
	}
	code := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	return sandbox.ExitOfCode(code), nil
}

func racctEnabled(ctx context.Context) (bool, error) {
	out, err := run(ctx, "sysctl", "-n", "kern.racct.enable")
	if err != nil {
		// A kernel built without RACCT has no such sysctl.
		return false, nil
	}
	return strings.TrimSpace(string(out)) == "1", nil
}

func run(ctx context.Context, argv ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

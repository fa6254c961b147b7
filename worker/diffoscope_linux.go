package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/sandbox"
)

// Where a diffoscope task's directories are inside its sandbox.
const (
	boxA   = "/kiln/a"
	boxB   = "/kiln/b"
	boxOut = "/kiln/out"
)

// diffoscopeUser is who the hook runs as in its sandbox: nobody, so that it
// holds no capability even in the sandbox's user namespace, and can write
// only the directories that are its (the report's and /tmp).
const diffoscopeUser = 65534

// hostDirs are the host's program directories the sandbox sees read-only
// (or as the same symlink, on a merged-/usr host).
var hostDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// hostEtc are the entries of the host's /etc a program needs to start and
// run (the dynamic linker's cache, alternatives' symlinks, users, MIME and
// magic data). The rest of /etc (keys, passwords, the worker's own config)
// is not shown.
var hostEtc = []string{"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "passwd", "group",
	"nsswitch.conf", "localtime", "magic", "magic.mime", "mime.types", "debian_version", "os-release"}

// runDiffoscope runs the diffoscope hook in a container-tier sandbox of
// its own, made by the worker's launcher with every run's hardening
// (seccomp, user namespace, no new privileges, AppArmor where the host has
// it): network none, the host's programs and the runs' files read-only,
// the report's directory and a scratch /tmp the only places it can write,
// the host's per-run limits. The container is named by the task's run key
// and held like a run's, so the reaper leaves it to this task alone.
func (w *Worker) runDiffoscope(ctx context.Context, a *api.Assignment, h sandbox.Hook, env map[string]string, d diffoscopeDirs, console io.Writer) sandbox.Check {
	r, ok := w.cfg.Exec.(*sandbox.Runner)
	if !ok || r.Launcher == nil {
		return sandbox.Check{Name: h.Name, Stage: h.Stage, ExitCode: -1,
			Err: "this worker has no container launcher to run the hook in"}
	}
	key, release, err := r.Hold(a.RunID)
	if err != nil {
		return sandbox.Check{Name: h.Name, Stage: h.Stage, ExitCode: -1, Err: fmt.Sprintf("hold the task's sandbox name: %v", err)}
	}
	defer release()
	res := sandbox.Resources{
		MemoryBytes: int64(w.cfg.Defaults.Memory),
		CPUs:        w.cfg.Defaults.CPUs,
		Pids:        w.cfg.Defaults.Pids,
		Network:     sandbox.NetworkNone,
	}
	return runHookSandboxed(ctx, r.Launcher, key, h, env, d, res, console)
}

// runHookSandboxed runs hook h in a sandbox named key made by l, with env
// added to its environment and the task's directories d mounted at
// boxA, boxB (read-only) and boxOut (writable). It ends like a hook on the
// host: its output into console with the hook's prefix, killed (the whole
// sandbox) on its timeout or ctx's cancel, and the sandbox deleted before
// it returns, so that the host may read what the hook wrote without
// racing it.
func runHookSandboxed(ctx context.Context, l sandbox.Launcher, key string, h sandbox.Hook, env map[string]string,
	d diffoscopeDirs, res sandbox.Resources, console io.Writer) sandbox.Check {
	c := sandbox.Check{Name: h.Name, Stage: h.Stage, ExitCode: -1}
	if len(h.Command) == 0 || !filepath.IsAbs(h.Command[0]) {
		c.Err = "command must start with an absolute path"
		return c
	}
	spec, err := diffoscopeSpec(key, h, env, d)
	if err != nil {
		c.Err = fmt.Sprintf("hook sandbox: %v", err)
		return c
	}
	spec.Resources = res
	out, flush := sandbox.HookConsole(console, h.Name)
	defer flush()
	spec.Console = out

	timeout := h.Timeout
	if timeout <= 0 {
		timeout = sandbox.DefaultHookTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sb, err := l.Start(hctx, spec)
	if err != nil {
		c.Err = fmt.Sprintf("start the hook's sandbox: %v", err)
		return c
	}
	// Deleted whatever ctx is; the report is read only after.
	defer func() {
		dctx, stop := cleanup.Context(ctx, cleanup.Kill)
		defer stop()
		if err := sb.Delete(dctx); err != nil && c.Err == "" {
			c.ExitCode, c.Err = -1, fmt.Sprintf("delete the hook's sandbox: %v", err)
		}
	}()
	exit, err := sb.Wait(hctx)
	switch {
	case err == nil && exit.Code == 0:
		c.ExitCode = 0
	case err == nil:
		c.ExitCode = exit.Code
		c.Err = "exit status " + strconv.Itoa(exit.Code)
		if exit.Signal != "" {
			c.ExitCode, c.Err = -1, "killed by "+exit.Signal
		}
		if exit.OOMKilled {
			c.Err += " (out of memory)"
		}
	case ctx.Err() != nil:
		c.Err = "cancelled"
	case errors.Is(hctx.Err(), context.DeadlineExceeded):
		c.Err = fmt.Sprintf("timed out after %s", timeout)
	default:
		c.Err = err.Error()
	}
	return c
}

// diffoscopeSpec makes the sandbox's root in d.task/root: an empty tree
// the host's programs are mounted into, with a /tmp of its own.
func diffoscopeSpec(key string, h sandbox.Hook, env map[string]string, d diffoscopeDirs) (sandbox.Spec, error) {
	root := filepath.Join(d.task, "root")
	if err := os.RemoveAll(root); err != nil {
		return sandbox.Spec{}, err
	}
	for _, p := range []string{root, filepath.Join(root, "tmp")} {
		if err := os.Mkdir(p, 0o755); err != nil {
			return sandbox.Spec{}, err
		}
	}
	// Scratch for diffoscope's unpacking; in the task's directory, so it
	// goes with the task.
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return sandbox.Spec{}, err
	}
	// The hook's user sees everything here as another's: the sandbox's
	// mounts must be reachable (not readable) by it, and the report's
	// directory is its own.
	for _, p := range []string{filepath.Dir(d.task), d.task} {
		if err := os.Chmod(p, 0o711); err != nil {
			return sandbox.Spec{}, err
		}
	}
	if err := os.Chown(d.out, diffoscopeUser, diffoscopeUser); err != nil {
		return sandbox.Spec{}, err
	}
	var mounts []sandbox.Mount
	for _, p := range hostDirs {
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return sandbox.Spec{}, err
		case fi.Mode()&fs.ModeSymlink != 0:
			to, err := os.Readlink(p)
			if err != nil {
				return sandbox.Spec{}, err
			}
			if err := os.Symlink(to, filepath.Join(root, p)); err != nil {
				return sandbox.Spec{}, err
			}
		case fi.IsDir():
			mounts = append(mounts, sandbox.Mount{Source: p, Target: p, ReadOnly: true})
		}
	}
	for _, name := range hostEtc {
		p := filepath.Join("/etc", name)
		if _, err := os.Stat(p); err == nil {
			mounts = append(mounts, sandbox.Mount{Source: p, Target: p, ReadOnly: true})
		}
	}
	// A hook command outside the host's program directories (a wrapper
	// script in /opt, say) is shown at its own path, alone.
	if !underAny(h.Command[0], hostDirs) {
		mounts = append(mounts, sandbox.Mount{Source: h.Command[0], Target: h.Command[0], ReadOnly: true})
	}
	mounts = append(mounts,
		sandbox.Mount{Source: d.a, Target: boxA, ReadOnly: true},
		sandbox.Mount{Source: d.b, Target: boxB, ReadOnly: true},
		sandbox.Mount{Source: d.out, Target: boxOut})

	vars := maps.Clone(env)
	maps.Copy(vars, map[string]string{
		"PATH":             "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":             "/tmp",
		"TMPDIR":           "/tmp",
		"LANG":             "C.UTF-8",
		"KILN_STAGE":       string(h.Stage),
		"KILN_ARTIFACTS_A": boxA,
		"KILN_ARTIFACTS_B": boxB,
		"KILN_REPORT":      boxOut + "/" + api.DiffoscopeReport,
	})
	envList := make([]string, 0, len(vars))
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		envList = append(envList, k+"="+vars[k])
	}
	uid := strconv.Itoa(diffoscopeUser)
	return sandbox.Spec{
		RunID:     key,
		Root:      root,
		Args:      h.Command,
		Env:       envList,
		Cwd:       "/tmp",
		Hostname:  "diffoscope",
		User:      uid + ":" + uid,
		Mounts:    mounts,
		Isolation: api.IsolationContainer,
	}, nil
}

// underAny reports whether p is one of dirs or below one.
func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

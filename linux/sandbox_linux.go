package linux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
)

// containerdSandbox is one started container.
type containerdSandbox struct {
	c      *Containerd
	ctr    containerd.Container
	labels map[string]string // ctr's labels (its id range, its idmapped mounts)
	task   sandboxTask
	stop   context.CancelFunc // ends the task wait
	// release gives the sandbox's shim group back once it is deleted.
	release func()
	net     *netcni.Attached // the run's network, if any: closed after the container
	// statusC delivers the init's exit; watch reads it once started.
	statusC <-chan containerd.ExitStatus
	// gate is a warm task's gate (see Prepare), closed and removed with it.
	gate *gate
	// initMountpoint is where runc may have made the mountpoint of
	// sandboxInitMount in the root, removed with the sandbox: a root can
	// outlive it (an image's build tree).
	initMountpoint string

	done chan struct{} // closed once exit and err are set
	exit sandbox.Exit
	err  error

	deleteMu sync.Mutex
}

func (s *containerdSandbox) ID() string { return s.ctr.ID() }

func (s *containerdSandbox) nsCtx(ctx context.Context) context.Context {
	return s.c.nsCtx(ctx)
}

// start starts the init process of a created sandbox and follows it.
func (s *containerdSandbox) start(ctx context.Context) error {
	if err := s.task.Start(s.nsCtx(ctx)); err != nil {
		return fmt.Errorf("start task %s: %w", s.ctr.ID(), err)
	}
	go s.watch(s.statusC) //nolint:gosec // G118: the watcher follows the sandbox past Start's ctx, until its init exits
	return nil
}

// discard deletes a sandbox whose start failed or that is no longer
// wanted, with a context of its own: ctx may be what failed.
func (s *containerdSandbox) discard(ctx context.Context) error {
	cctx, cancel := cleanup.Context(ctx, cleanup.Step)
	defer cancel()
	return s.Delete(cctx)
}

// watch records how the init process ended, once all of its output has
// been copied to the console.
func (s *containerdSandbox) watch(statusC <-chan containerd.ExitStatus) {
	defer close(s.done)
	code, _, err := (<-statusC).Result()
	if err != nil {
		// Lost track of the task (daemon gone, sandbox deleted): its
		// output may still be flowing, so do not wait for the copy.
		s.err = fmt.Errorf("wait for %s: %w", s.ctr.ID(), err)
		return
	}
	// The shim closes its end of the fifos once the init process (and with
	// it the whole PID namespace) is gone, so this ends.
	s.task.IO().Wait()
	// The fifos are of no more use; closing here also frees them when the
	// task is deleted through another handle (Reap) rather than Delete.
	_ = s.task.IO().Close()
	s.exit = exitFromCode(code)
	// The cgroup lives until the task is deleted, so its OOM count can
	// still be read; the OOM killer may have picked a child, not the init,
	// and the job's exit code then is whatever its script made of that.
	if code != 0 {
		ctx, cancel := context.WithTimeout(s.nsCtx(context.Background()), 10*time.Second)
		if spec, err := s.ctr.Spec(ctx); err == nil && spec.Linux != nil {
			s.exit.OOMKilled = cgroupEvent(spec.Linux.CgroupsPath, "memory", "oom_kill")
			s.exit.PidsLimited = cgroupEvent(spec.Linux.CgroupsPath, "pids", "max")
		}
		cancel()
	}
}

// cgroupEvent reports whether the counter key of controller's events in
// the cgroup at path (cgroupfs style, as containerd sets it by default:
// /<namespace>/<id>) is above 0: "oom_kill" of memory (memory.events on
// cgroup v2, memory.oom_control on v1), "max" of pids (pids.events, a fork
// refused at the limit).
func cgroupEvent(path, controller, key string) bool {
	if path == "" || strings.Contains(path, ":") { // systemd-style slice:prefix:name
		return false
	}
	files := []string{
		filepath.Join("/sys/fs/cgroup", path, controller+".events"),
		filepath.Join("/sys/fs/cgroup", controller, path, controller+".events"),
	}
	if controller == "memory" {
		files[1] = filepath.Join("/sys/fs/cgroup/memory", path, "memory.oom_control")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok && k == key {
				return v != "0"
			}
		}
	}
	return false
}

// exitFromCode maps the shim's status: runc reports a process killed by
// signal n as 128+n. A process that itself exits with such a code is
// indistinguishable and is reported as signalled too.
func exitFromCode(code uint32) sandbox.Exit {
	e := sandbox.Exit{Code: int(code)}
	if code > 128 && code < 128+65 {
		n := syscall.Signal(code - 128)
		if name := unix.SignalName(n); name != "" {
			e.Signal = name
		} else {
			e.Signal = fmt.Sprintf("SIG%d", int(n))
		}
	}
	return e
}

// Wait blocks until the init process has exited and everything it and its
// children wrote to stdout and stderr has been copied to Spec.Console, so
// the console is complete when Wait returns. A code above 128 is reported
// as killed by signal code-128. Wait may be called any number of times,
// concurrently; ctx only bounds this call.
func (s *containerdSandbox) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-s.done:
		return s.exit, s.err
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
}

// Signal sends sig to the init process only. A process that has already
// exited is not an error.
func (s *containerdSandbox) Signal(ctx context.Context, sig sandbox.Signal) error {
	n := unix.SignalNum(string(sig))
	if n == 0 {
		return fmt.Errorf("signal %q: %w", sig, errdefs.ErrInvalid)
	}
	if s.exited() {
		// runsc fails to signal a stopped sandbox, and the contract
		// says signalling an ended job is no error.
		return nil
	}
	return s.kill(ctx, n, false)
}

// Kill sends SIGKILL to every process of the container. A container whose
// processes are all gone is not an error.
func (s *containerdSandbox) Kill(ctx context.Context) error {
	if s.exited() {
		// The init process was PID 1 of the sandbox's own PID namespace;
		// the kernel killed and reaped every other process in it before
		// the init's exit was reported, so there is nothing to kill, and
		// a `runc kill --all` would cost a process start for nothing.
		return nil
	}
	return s.kill(ctx, unix.SIGKILL, true)
}

// exited reports whether the init process's exit has been seen.
func (s *containerdSandbox) exited() bool {
	select {
	case <-s.done:
		return s.err == nil
	default:
		return false
	}
}

func (s *containerdSandbox) kill(ctx context.Context, sig syscall.Signal, all bool) error {
	err := s.task.Kill(s.nsCtx(ctx), sig, all)
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("signal %s to %s: %w", unix.SignalName(sig), s.ctr.ID(), err)
	}
	return nil
}

// Delete kills what is left, deletes the task and the container.
// Idempotent; a sandbox already gone (reaped, deleted) is success.
func (s *containerdSandbox) Delete(ctx context.Context) error {
	s.deleteMu.Lock()
	defer s.deleteMu.Unlock()
	ctx = s.nsCtx(ctx)
	undo := func() error { return s.c.undoUsernsOf(s.ctr.ID(), s.labels) }
	exited := s.exited()
	var undone chan error
	if exited {
		// Every process of the sandbox is gone (see Kill), so its
		// idmapped mounts and id range can go while runc deletes the
		// task: a run's delete waits for the longer of the two, not both.
		undone = make(chan error, 1)
		go func() { undone <- undo() }()
	}
	err := s.task.Delete(ctx, exited)
	if undone != nil {
		err = errors.Join(err, <-undone)
	} else if err == nil {
		err = undo()
	}
	if err != nil {
		return err
	}
	if err := s.ctr.Delete(ctx); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", s.ctr.ID(), err)
	}
	s.stop()
	if s.release != nil {
		s.release()
	}
	if err := s.gate.remove(); err != nil {
		return err
	}
	if s.initMountpoint != "" {
		// rmdir: an image's own non-empty directory of that name stays.
		if err := unix.Rmdir(s.initMountpoint); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOTDIR) {
			s.c.log.Debug("remove the init's mountpoint", "path", s.initMountpoint, "err", err)
		}
	}
	// After the container: its processes no longer use the network.
	return s.net.Close(ctx)
}

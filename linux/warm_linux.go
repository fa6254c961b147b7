package linux

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/containerd/containerd"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

var _ sandbox.Preparer = (*Containerd)(nil)

// Prepare creates the container and task of spec (a warm task) without
// starting its init: runc create is done, the init waits in runc's exec
// fifo. Only the container tier with network "none" can wait like this (a
// bridge network would have to come from a pool of namespaces made ahead,
// which kiln does not keep yet); others are refused with ErrUnsupported.
func (c *Containerd) Prepare(ctx context.Context, spec sandbox.Spec) (sandbox.Prepared, error) {
	if spec.Isolation != "" && spec.Isolation != names.IsolationContainer {
		return nil, fmt.Errorf("warm task: isolation %q: %w", spec.Isolation, sandbox.ErrUnsupported)
	}
	if spec.Network.OrNone() != sandbox.NetworkNone {
		return nil, fmt.Errorf("warm task: network %q: %w", spec.Network.OrNone(), sandbox.ErrUnsupported)
	}
	console := &switchWriter{}
	s, err := c.create(ctx, spec, console)
	if err != nil {
		return nil, err
	}
	return &warmTask{s: s, console: console, res: spec.Resources}, nil
}

// warmTask is a created container whose init has not been started.
type warmTask struct {
	s       *containerdSandbox
	console *switchWriter
	res     sandbox.Resources // the limits it was created with
}

// Start hands the task to its run: console, limits (task.Update, only
// when they differ from those it was made with: an update is a runc
// process), hostname (set in the container's UTS namespace from here, as
// runc set the warm one at create) and the start of its init.
func (w *warmTask) Start(ctx context.Context, a sandbox.Adoption) (sandbox.Sandbox, error) {
	ctx = w.s.nsCtx(ctx)
	w.console.set(a.Console)
	if r := a.Resources; r.MemoryBytes != w.res.MemoryBytes || r.CPUs != w.res.CPUs || r.Pids != w.res.Pids {
		if err := w.s.task.Update(ctx, containerd.WithResources(linuxResources(r))); err != nil {
			return nil, fmt.Errorf("warm task %s: set limits: %w", w.s.ctr.ID(), err)
		}
	}
	if a.Hostname != "" {
		if err := setHostname(w.s.task.Pid(), a.Hostname); err != nil {
			return nil, fmt.Errorf("warm task %s: %w", w.s.ctr.ID(), err)
		}
	}
	if err := w.s.start(ctx); err != nil {
		return nil, err
	}
	return w.s, nil
}

// Delete removes the task and its container (and user namespace).
func (w *warmTask) Delete(ctx context.Context) error { return w.s.Delete(ctx) }

// linuxResources is r as an update: a limit r does not set is lifted (-1),
// since the task may have been made with one.
func linuxResources(r sandbox.Resources) *specs.LinuxResources {
	mem, pids, quota := int64(-1), int64(-1), int64(-1)
	period := uint64(cfsPeriod)
	if r.MemoryBytes > 0 {
		mem = r.MemoryBytes
	}
	if r.Pids > 0 {
		pids = r.Pids
	}
	if r.CPUs > 0 {
		quota = int64(r.CPUs * cfsPeriod)
	}
	// swap = memory, as at create: no swapping past the limit.
	return &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem, Swap: &mem},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Pids:   &specs.LinuxPids{Limit: pids},
	}
}

// setHostname sets the hostname in the UTS namespace of process pid, from
// a thread of its own that is thrown away afterwards.
func setHostname(pid uint32, name string) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread has left the process's UTS namespace,
		// so the runtime must end it with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/uts", pid))
			if err != nil {
				return fmt.Errorf("uts namespace: %w", err)
			}
			defer ns.Close()
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWUTS); err != nil {
				return fmt.Errorf("enter uts namespace of %d: %w", pid, err)
			}
			if err := unix.Sethostname([]byte(name)); err != nil {
				return fmt.Errorf("set hostname %q: %w", name, err)
			}
			return nil
		}()
	}()
	return <-errc
}

// switchWriter is a warm task's console: nothing until its run sets where
// the output goes (the init writes nothing before it is started).
type switchWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *switchWriter) set(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w = w
}

func (s *switchWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	if w == nil {
		return len(p), nil
	}
	return w.Write(p)
}

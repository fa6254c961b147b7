package linux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

var _ sandbox.Preparer = (*Containerd)(nil)

// gateDir holds the gates of warm tasks, one FIFO per container, named
// "<owner hash>-<container id>".
const gateDir = runDir + "/gate"

// gatePath is where a warm task's gate is mounted in it.
const gatePath = "/.kiln-gate"

// gateScript holds a warm task's init until its run: it waits for a line
// on the gate, then execs the task's own args ($@).
const gateScript = `read -r _ <` + gatePath + ` && exec "$@"`

// Prepare makes a warm task of spec: its container is created and its task
// started, but the init waits, before it runs spec.Args, for a line on a
// FIFO (its gate, mounted read-only at /.kiln-gate) that Start writes. So
// the run's path has neither `runc create` nor `runc start` in it: both
// are processes, and `runc start` alone was about 20 ms of a warm start on
// a loaded host. Only the container tier with network "none" can wait like
// this (a bridge network would have to come from a pool of namespaces made
// ahead, which kiln does not keep yet); others are refused with
// ErrUnsupported.
func (c *Containerd) Prepare(ctx context.Context, spec sandbox.Spec) (_ sandbox.Prepared, retErr error) {
	if spec.Isolation != "" && spec.Isolation != names.IsolationContainer {
		return nil, fmt.Errorf("warm task: isolation %q: %w", spec.Isolation, errdefs.ErrUnsupported)
	}
	if spec.Network.OrNone() != sandbox.NetworkNone {
		return nil, fmt.Errorf("warm task: network %q: %w", spec.Network.OrNone(), errdefs.ErrUnsupported)
	}
	g, err := c.newGate(spec.RunID)
	if err != nil {
		return nil, err
	}
	spec.Mounts = append(slices.Clone(spec.Mounts), sandbox.Mount{Source: g.path, Target: gatePath, ReadOnly: true})
	spec.Args = append([]string{"/bin/sh", "-c", gateScript, "kiln-gate"}, spec.Args...)
	console := &switchWriter{}
	s, err := c.create(ctx, spec, console)
	if err != nil {
		return nil, errors.Join(err, g.remove())
	}
	s.gate = g
	if err := s.start(ctx); err != nil {
		return nil, errors.Join(err, s.discard(ctx))
	}
	return &warmTask{s: s, console: console, res: spec.Resources}, nil
}

// gate is the host's end of a warm task's gate.
type gate struct {
	path string
	// f is held open read-write from its making until the sandbox goes:
	// the line written to it stays in the pipe even if the init has not
	// opened its end yet, and the init's open never blocks.
	f *os.File
}

// gatePathOf is where the gate of container id is on the host.
func (c *Containerd) gatePathOf(id string) string {
	return filepath.Join(gateDir, ownerHash(c.ranges.owner)+"-"+id)
}

func (c *Containerd) newGate(runID string) (*gate, error) {
	if err := os.MkdirAll(gateDir, 0o711); err != nil {
		return nil, fmt.Errorf("warm task gate: %w", err)
	}
	p := c.gatePathOf(containerPrefix + runID)
	_ = os.Remove(p) // a crashed process's, of the same id
	// 0644: the sandbox's root is not the owner, and must read it; nobody
	// in it may write it.
	if err := unix.Mkfifo(p, 0o644); err != nil {
		return nil, fmt.Errorf("warm task gate: %w", err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		_ = os.Remove(p)
		return nil, fmt.Errorf("warm task gate: %w", err)
	}
	return &gate{path: p, f: f}, nil
}

// open lets the init through.
func (g *gate) open() error {
	if _, err := g.f.Write([]byte("go\n")); err != nil {
		return fmt.Errorf("warm task gate: %w", err)
	}
	return nil
}

// remove closes and removes the gate. Nil or removed already: nothing.
func (g *gate) remove() error {
	if g == nil {
		return nil
	}
	if g.f != nil {
		_ = g.f.Close()
		g.f = nil
	}
	if err := os.Remove(g.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("warm task gate: %w", err)
	}
	return nil
}

// removeGates removes the gate of container id, whichever launcher's.
func removeGates(id string) error {
	gates, _ := filepath.Glob(filepath.Join(gateDir, "*-"+id))
	for _, g := range gates {
		if err := os.Remove(g); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("warm task gate: %w", err)
		}
	}
	return nil
}

// reapGates removes this launcher's gates whose container does not exist
// (their process died before it deleted them).
func (c *Containerd) reapGates(ctx context.Context) error {
	dead, err := c.deadEntries(ctx, gateDir)
	if err != nil {
		return fmt.Errorf("warm task gates: %w", err)
	}
	var errs []error
	for name := range dead {
		if err := os.Remove(filepath.Join(gateDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("warm task gate: %w", err))
		}
	}
	return errors.Join(errs...)
}

// warmTask is a container whose init waits at its gate.
type warmTask struct {
	s       *containerdSandbox
	console *switchWriter
	res     sandbox.Resources // the limits it was created with
}

// Start hands the task to its run: console, limits (task.Update, only
// when they differ from those it was made with: an update is a runc
// process), hostname (set in the container's UTS namespace from here, as
// runc set the warm one at create), then it opens the gate.
func (w *warmTask) Start(ctx context.Context, a sandbox.Adoption) (sandbox.Sandbox, error) {
	ctx = w.s.nsCtx(ctx)
	select {
	case <-w.s.done:
		return nil, fmt.Errorf("warm task %s: its init ended while it waited: %w", w.s.ctr.ID(), errdefs.ErrNotFound)
	default:
	}
	w.console.set(a.Console)
	if r := a.Resources; r.MemoryBytes != w.res.MemoryBytes || r.CPUs != w.res.CPUs || r.Pids != w.res.Pids {
		if err := w.s.task.Update(ctx, linuxResources(r)); err != nil {
			return nil, fmt.Errorf("warm task %s: set limits: %w", w.s.ctr.ID(), err)
		}
	}
	if a.Hostname != "" {
		if err := setUTS(w.s.task.Pid(), unix.Sethostname, a.Hostname); err != nil {
			return nil, fmt.Errorf("warm task %s: %w", w.s.ctr.ID(), err)
		}
	}
	if err := w.s.gate.open(); err != nil {
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

// setUTS sets the hostname or domain name (set: unix.Sethostname,
// unix.Setdomainname) in the UTS namespace of process pid, from a thread
// of its own that is thrown away afterwards.
func setUTS(pid uint32, set func([]byte) error, name string) error {
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
			if err := set([]byte(name)); err != nil {
				return fmt.Errorf("set %q: %w", name, err)
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

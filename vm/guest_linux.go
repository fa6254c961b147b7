package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
	"golang.org/x/sys/unix"
)

// guest is one running qemu process.
type guest struct {
	id      string
	run     string
	dir     string
	net     *netcni.Attached // nil: the guest has no network of its own
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	exit    chan exitReport // one report, when qemu has closed the exit port
	killed  bool
	mu      sync.Mutex
}

func (g *guest) ID() string { return g.id }

// Wait returns the job's exit code, which the guest's init sends on the
// exit port before it reboots.
func (g *guest) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-g.done:
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
	var rep exitReport
	// qemu is gone, and with it the socket's other end: the report is due.
	select {
	case rep = <-g.exit:
		g.exit <- rep // a second Wait gets it too
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
	code, err := rep.code()
	if err == nil {
		// The init reports the job's status as sh gives it: 128+n for
		// a job that signal n killed.
		return sandbox.ExitOfCode(code), nil
	}
	g.mu.Lock()
	killed := g.killed
	g.mu.Unlock()
	if killed {
		return sandbox.Exit{Code: 128 + int(syscall.SIGKILL), Signal: "SIGKILL"}, nil
	}
	log, _ := os.ReadFile(filepath.Join(g.dir, "qemu.log"))
	return sandbox.Exit{}, fmt.Errorf("vm: guest %s: %w (qemu: %v: %s)", g.id, err, g.waitErr, lastLine(log))
}

// Signal: SIGTERM presses the guest's ACPI power button over QMP, which
// the guest's init passes to the job as SIGTERM; SIGKILL kills qemu. A
// guest whose qemu has ended takes no signal, and that is no error: its
// job has ended too.
func (g *guest) Signal(ctx context.Context, sig sandbox.Signal) error {
	if sig == sandbox.SIGKILL {
		return g.Kill(ctx)
	}
	if g.qemuEnded() {
		return nil
	}
	err := qmp(ctx, filepath.Join(g.dir, "qmp.sock"), "system_powerdown")
	// qemu may end while we talk to it (its guest powered off): its
	// monitor is gone then, which is no failure to signal.
	if err != nil && g.qemuEnded() {
		return nil
	}
	return err
}

// qemuEnded reports whether qemu has exited, whether or not Wait's
// goroutine has reaped it yet: waitid without reaping (WNOWAIT) sees an
// exited child, and a reaped one is no child any more (ECHILD).
func (g *guest) qemuEnded() bool {
	select {
	case <-g.done:
		return true
	default:
	}
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, g.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return errors.Is(err, unix.ECHILD) || (err == nil && info.Signo == int32(unix.SIGCHLD))
}

// Kill kills qemu and waits until it is gone; with it goes every process
// of the guest, so /out is the host's alone afterwards.
func (g *guest) Kill(ctx context.Context) error {
	select {
	case <-g.done:
		return nil
	default:
	}
	g.mu.Lock()
	g.killed = true
	g.mu.Unlock()
	if err := g.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vm: kill %s: %w", g.id, err)
	}
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("vm: %s did not exit after SIGKILL: %w", g.id, ctx.Err())
	}
}

// Delete kills the guest and removes its directory and network (the tap
// went with qemu). Idempotent.
func (g *guest) Delete(ctx context.Context) error {
	if err := g.Kill(ctx); err != nil {
		return err
	}
	if err := removeGuestDir(g.dir); err != nil {
		return err
	}
	return g.net.Close(ctx)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pidfileName is where kiln keeps a guest's pid, in its directory.
const pidfileName = "qemu.pid"

// Reap kills every kiln guest under Dir whose run keep does not hold and
// removes its directory, then tears down the networks of the runs keep
// does not hold (the container tier's Reap does the same on the shared
// network; either may come first, both are idempotent). Guests are found
// by their -pidfile argument in /proc, so a guest whose directory is gone
// is found as well.
func (l *Launcher) Reap(ctx context.Context, keep func(runID string) bool) error {
	var errs []error
	for pid, run := range l.guests() {
		if keep(run) {
			continue
		}
		l.log.Info("reaping orphaned guest", "run", run, "pid", pid)
		if err := killPID(ctx, pid); err != nil {
			errs = append(errs, err)
		}
	}
	entries, err := os.ReadDir(l.opts.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !e.IsDir() || keep(e.Name()) {
			continue
		}
		if err := removeGuestDir(filepath.Join(l.opts.Dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	runs, err := l.net().List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, run := range runs {
		if keep(run) {
			continue
		}
		l.log.Info("reaping network", "run", run)
		if err := l.net().Teardown(ctx, run); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// guests maps the pid of every live kiln guest under Dir to its run.
func (l *Launcher) guests() map[int]string {
	out := map[int]string{}
	procs, _ := os.ReadDir("/proc")
	prefix := filepath.Clean(l.opts.Dir) + "/"
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if run := runOf(pid, prefix); run != "" {
			out[pid] = run
		}
	}
	return out
}

// runOf returns the run of the guest pid if it is a qemu whose -name is
// a directory under prefix (its guest's), else "". A guest started by an
// older kiln is found by its -pidfile under prefix.
func runOf(pid int, prefix string) string {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	args := strings.Split(string(cmdline), "\x00")
	for i := 0; i+1 < len(args); i++ {
		var rel string
		switch args[i] {
		case "-name":
			dir := firstOpt(args[i+1])
			if !strings.HasPrefix(dir, prefix) {
				continue
			}
			rel = strings.TrimPrefix(dir, prefix)
		case "-pidfile":
			if !strings.HasPrefix(args[i+1], prefix) || filepath.Base(args[i+1]) != pidfileName {
				continue
			}
			rel = filepath.Dir(strings.TrimPrefix(args[i+1], prefix))
		default:
			continue
		}
		if rel != "" && rel != "." && !strings.Contains(rel, "/") {
			return rel
		}
	}
	return ""
}

// guestPID is the pid of the live guest whose directory is dir, or 0.
func guestPID(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, pidfileName))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	if runOf(pid, filepath.Dir(dir)+"/") != filepath.Base(dir) {
		return 0
	}
	return pid
}

// killPID SIGKILLs a guest that is not our child and waits for it to go.
func killPID(ctx context.Context, pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("vm: kill guest %d: %w", pid, err)
	}
	for {
		// A zombie whose parent is gone is reaped by init soon; its
		// cmdline reads empty once it is a zombie.
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err != nil || len(b) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm: guest %d still there after SIGKILL: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

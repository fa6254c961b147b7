package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/seccompbpf"
)

// The filter is installed on every thread (TSYNC), and the exec comes from
// the thread that installed it: a filter on one thread only would let an
// exec from another run the job unfiltered.
func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--probe" {
		probe()
	}
	if len(os.Args) < 3 {
		fail(126, "usage: kiln-sandbox-init FILTER PROGRAM [ARG...] | --probe")
	}
	if err := installFilter(os.Args[1]); err != nil {
		fail(126, "seccomp: "+err.Error())
	}
	path, err := exec.LookPath(os.Args[2])
	if err == nil {
		err = syscall.Exec(path, os.Args[2:], os.Environ())
	}
	code := 127
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOEXEC) {
		code = 126
	}
	fail(code, os.Args[2]+": "+err.Error())
}

func installFilter(file string) error {
	prog, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := seccompbpf.Check(prog); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	n := uint16(len(prog) / seccompbpf.InstructionSize) //nolint:gosec // G115: Check bounds it by MaxInstructions
	fprog := unix.SockFprog{Len: n, Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	r, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return errno
	}
	if r != 0 {
		return fmt.Errorf("thread %d could not take the filter", r)
	}
	return nil
}

func probe() {
	if _, err := os.Stdout.WriteString("ready\n"); err != nil {
		os.Exit(1)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, "kiln-sandbox-init:", msg)
	os.Exit(code)
}

package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
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
	args := os.Args[1:]
	var persona uint64
	if len(args) > 0 && args[0] == "--personality" {
		if len(args) < 2 {
			fail(126, "--personality: want flags")
		}
		var err error
		if persona, err = personalityFlags(args[1]); err != nil {
			fail(126, "--personality: "+err.Error())
		}
		args = args[2:]
	}
	if len(args) < 2 {
		fail(126, "usage: kiln-sandbox-init [--personality FLAGS] FILTER PROGRAM [ARG...] | --probe")
	}
	// Before the filter: the job's filter refuses these flags (they are
	// the job's to keep, not to set), and the exec below is what they
	// take effect at.
	if persona != 0 {
		if _, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, uintptr(persona), 0, 0); errno != 0 {
			fail(126, "personality: "+errno.Error())
		}
	}
	if err := installFilter(args[0]); err != nil {
		fail(126, "seccomp: "+err.Error())
	}
	path, err := exec.LookPath(args[1])
	if err == nil {
		err = syscall.Exec(path, args[1:], os.Environ())
	}
	code := 127
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOEXEC) {
		code = 126
	}
	fail(code, args[1]+": "+err.Error())
}

// Personality flags the init sets (reproduce variations aslr and kernel,
// docs/reproducibility.md); any other is refused, so the init never sets a
// flag kiln did not mean (READ_IMPLIES_EXEC, MMAP_PAGE_ZERO...).
const (
	addrNoRandomize = 0x0040000
	uname26         = 0x0020000
)

// personalityFlags parses s, hex (0x...) or decimal, and checks it holds
// only flags the init may set, at least one.
func personalityFlags(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, err
	}
	if v == 0 || v&^(addrNoRandomize|uname26) != 0 {
		return 0, fmt.Errorf("%s: want ADDR_NO_RANDOMIZE (0x40000), UNAME26 (0x20000) or both", s)
	}
	return v, nil
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

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// denyUname is a filter that refuses uname(2) with EPERM and allows the
// rest.
func denyUname() []byte {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_UNAME},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), len(prog)*8))
}

// allowAll is a filter that allows every system call.
func allowAll() []byte {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), len(prog)*8))
}

func TestSandboxInit(t *testing.T) {
	bin := testsupport.SandboxInit(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("deny-uname.bpf", denyUname())
	odd := write("odd.bpf", []byte("abc"))
	allow := write("allow.bpf", allowAll())
	marker := filepath.Join(dir, "ran")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // in the combined output
		ran      bool   // whether the job (touch marker) may have run
	}{
		{"filter in place before the job", []string{good, "uname"}, 1, "Operation not permitted", false},
		{"the job runs under it", []string{good, "sh", "-c", "touch " + marker + "; grep Seccomp: /proc/self/status"}, 0, "Seccomp:\t2", true},
		{"no BPF program: nothing runs", []string{odd, "touch", marker}, 126, "no BPF program", false},
		{"no filter file: nothing runs", []string{filepath.Join(dir, "none.bpf"), "touch", marker}, 126, "no such file", false},
		{"program not found", []string{good, "kiln-no-such-program"}, 127, "not found", false},
		{"program not executable", []string{good, good}, 126, "permission denied", false},
		{"usage", []string{good}, 126, "usage", false},
		{"personality: no randomisation", []string{"--personality", "0x40000", good, "cat", "/proc/self/personality"}, 0, "00040000", false},
		{"personality: uname26", []string{"--personality", "0x20000", allow, "uname", "-r"}, 0, "2.6.", false},
		{"personality: both", []string{"--personality", "0x60000", good, "sh", "-c", "touch " + marker + "; cat /proc/self/personality"}, 0, "00060000", true},
		{"personality: another flag refused", []string{"--personality", "0x400000", good, "touch", marker}, 126, "want ADDR_NO_RANDOMIZE", false},
		{"personality: none refused", []string{"--personality", "0", good, "touch", marker}, 126, "want ADDR_NO_RANDOMIZE", false},
		{"personality: not a number", []string{"--personality", "aslr", good, "touch", marker}, 126, "invalid syntax", false},
		{"personality: no filter after it", []string{"--personality", "0x40000", good}, 126, "usage", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_ = os.Remove(marker)
			out, err := exec.Command(bin, tt.args...).CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || !strings.Contains(string(out), tt.wantOut) {
				t.Errorf("exit %d, output %q; want %d and %q", code, out, tt.wantCode, tt.wantOut)
			}
			if _, err := os.Stat(marker); err == nil && !tt.ran {
				t.Error("the job ran")
			}
		})
	}
}

// TestProbe: --probe says it is ready and waits for its input to close.
func TestProbe(t *testing.T) {
	cmd := exec.Command(testsupport.SandboxInit(t), "--probe")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.Close()
	if err := cmd.Wait(); err != nil || out.String() != "ready\n" {
		t.Fatalf("probe: %v, said %q", err, out.String())
	}
}

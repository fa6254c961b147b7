package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// `kiln worker run` warns when its server URL is plain HTTP to another
// host. The worker runs in a network namespace of its own with no
// interface up, so its attempts to reach 192.0.2.1 (TEST-NET-1) or
// 127.0.0.1 fail at once and no packet leaves the machine.
func TestWorkerWarnsOfPlainHTTP(t *testing.T) {
	kiln := testsupport.BuildKiln(t)
	for _, tt := range []struct {
		url  string
		warn bool
	}{
		{"http://192.0.2.1:8420", true},
		{"http://127.0.0.1:8420", false},
		{"https://192.0.2.1:8420", false},
	} {
		t.Run(tt.url, func(t *testing.T) {
			dir := testsupport.HostDir(t)
			cfg := testsupport.WriteFile(t, "worker.toml", "data_dir = \""+dir+"\"\n[containerd]\naddress = \""+filepath.Join(dir, "no.sock")+
				"\"\n[server]\nserver_id = \"5e5e5e5e00000000\"\nurl = \""+tt.url+"\"\ntoken = \"kiln_worker_x\"\n")
			// With containerd missing the worker still serves (its VM tier
			// needs none) and keeps failing to reach the server: the
			// warning, if any, was said long before. The output is read
			// until that failure shows, however long the host's probes
			// take under load; the deadline only guards a hang.
			out := workerOutputUntil(t, kiln, cfg, "cannot reach the kiln server", 3*time.Minute)
			if got := strings.Contains(string(out), "plain HTTP"); got != tt.warn {
				t.Fatalf("warned %v, want %v:\n%s", got, tt.warn, out)
			}
		})
	}
}

// workerOutputUntil runs `kiln worker run --config cfg`, in a network
// namespace of its own with nothing up (no packet of it leaves the
// machine), until its output
// shows want (or guard passes, which fails the test), stops it and
// returns what it printed.
func workerOutputUntil(t *testing.T, kiln, cfg, want string, guard time.Duration) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, kiln, "worker", "run", "--config", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var out []byte
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		out = append(append(out, sc.Bytes()...), '\n')
		if strings.Contains(sc.Text(), want) {
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	pr.Close()
	if !strings.Contains(string(out), want) {
		t.Fatalf("the worker never said %q within %v:\n%s", want, guard, out)
	}
	return out
}

// A worker SIGKILLed while its KVM probe runs leaves no qemu behind: the
// probe dies with it (it once stayed for good where KVM hangs, as here).
func TestKilledWorkerLeavesNoProbe(t *testing.T) {
	testsupport.NeedCommand(t, "qemu-system-x86_64")
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm: the worker starts no KVM probe")
	}
	kiln := testsupport.BuildKiln(t)
	dir := testsupport.HostDir(t)
	cfg := testsupport.WriteFile(t, "worker.toml", "data_dir = \""+dir+"\"\n[containerd]\naddress = \""+filepath.Join(dir, "no.sock")+
		"\"\n[server]\nserver_id = \"5e5e5e5e00000000\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"kiln_worker_x\"\n")
	cmd := exec.Command(kiln, "worker", "run", "--config", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	probe := 0
	for deadline := time.Now().Add(2 * time.Minute); probe == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		probe = childQemu(cmd.Process.Pid)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if probe == 0 {
		t.Fatal("the worker started no KVM probe within 2 minutes, though /dev/kvm and qemu are there")
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if err := syscall.Kill(probe, 0); err != nil {
			return // gone
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(probe, syscall.SIGKILL)
			t.Fatalf("the KVM probe (pid %d) outlived its SIGKILLed worker", probe)
		}
	}
}

// childQemu is the pid of a qemu-system child of parent, or 0.
func childQemu(parent int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(qemu-system") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(parent) {
			continue
		}
		pid, _ := strconv.Atoi(e.Name())
		return pid
	}
	return 0
}

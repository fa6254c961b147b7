package worker_test

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestCountExecs checks BenchmarkQueue's reading of strace -f output:
// what each exec is, and that a failed exec is not counted.
func TestCountExecs(t *testing.T) {
	for _, c := range []struct {
		name, trace string
		want        map[string]int
	}{
		{"shim start and daemon", `100 execve("/usr/bin/containerd-shim-runc-v2", ["/usr/bin/containerd-shim-runc-v2", "-namespace", "bench", "-address", "/tmp/kc1/c.sock", "-publish-binary", "/usr/bin/containerd", "-id", "raw-1", "start"], 0x7ffd /* 12 vars */) = 0
101 execve("/usr/bin/containerd-shim-runc-v2", ["/usr/bin/containerd-shim-runc-v2", "-namespace", "bench", "-id", "raw-1", "-address", "/tmp/kc1/c.sock"], 0xc0001 /* 14 vars */) = 0
`, map[string]int{"shim start": 1, "shim daemon": 1}},
		{"runc by subcommand, init re-exec", `102 execve("/usr/sbin/runc", ["runc", "--root", "/run/containerd/runc/bench", "--log", "/run/x/log.json", "--log-format", "json", "create", "--bundle", "/run/x", "--pid-file", "/run/x/init.pid", "raw-1"], 0xc0002 /* 14 vars */) = 0
103 execve("/proc/self/exe", ["runc", "init"], 0xc0003 /* 8 vars */) = 0
103 execveat(7, "", ["runc", "init"], 0x7ffe /* 8 vars */, AT_EMPTY_PATH) = 0
104 execve("/usr/sbin/runc", ["runc", "--root", "/run/containerd/runc/bench", "delete", "raw-1"], 0xc0004 /* 14 vars */) = 0
`, map[string]int{"runc create": 1, "runc init": 2, "runc delete": 1}},
		{"failed exec, unfinished and resumed", `105 execve("/usr/local/bin/true", ["true"], 0x7ff /* 3 vars */) = -1 ENOENT (No such file or directory)
105 execve("/bin/true", ["true"], 0x7ff /* 3 vars */) = 0
106 execve("/bin/sh", ["/bin/sh", "-c", "x"], 0x7ff /* 3 vars */ <unfinished ...>
107 execve("/bin/false", ["false"], 0x7ff /* 3 vars */ <unfinished ...>
106 <... execve resumed>) = 0
107 <... execve resumed>) = -1 EACCES (Permission denied)
108 execve("/proc/self/exe", ["runc", "init"], 0x7ff /* 3 vars */ <unfinished ...>
`, map[string]int{"other: true": 1, "other: sh": 1, "runc init": 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := countExecs(c.trace); !maps.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestMeterReadsDeadOrphans checks what BenchmarkQueue's CPU split rests
// on: a process orphaned below the benchmark (as a shim daemon is when its
// `shim start` exits) that spends CPU and exits before the meter looks is
// still counted, from its zombie, and then reaped.
func TestMeterReadsDeadOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	self := os.Getpid()
	m := &meter{server: self, worker: self, ctrd: self, ours: map[int]bool{}, reaped: map[string]time.Duration{}}
	before := m.sample(t)
	// The outer shell exits at once; the inner one, orphaned, burns CPU.
	out, err := exec.Command("sh", "-c", `sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done' & echo $!`).Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", out, err)
	}
	for {
		st, err := testsupport.ReadProcStat(pid)
		if err != nil {
			t.Fatalf("orphan %d: %v (reaped by someone else?)", pid, err)
		}
		if st.State == 'Z' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := m.sample(t).sub(before)
	if d[cpuOrphans] <= 0 {
		t.Errorf("orphan's CPU not counted: %v", d)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("orphan %d not reaped: %v", pid, err)
	}
}

// TestCountTreeExecs checks the reading of a tracefs fork/exec trace: only
// the descendants of the tree's tasks count, whichever thread forked them.
func TestCountTreeExecs(t *testing.T) {
	trace := `# tracer: nop
            kiln-101     [001] .....   10.000001: sched_process_fork: comm=kiln pid=101 child_comm=kiln child_pid=200
            kiln-200     [001] .....   10.000002: sched_process_exec: filename=/proc/self/exe pid=200 old_pid=200
            kiln-102     [000] .....   10.000003: sched_process_fork: comm=kiln pid=102 child_comm=kiln child_pid=201
              cp-201     [000] .....   10.000004: sched_process_exec: filename=/usr/bin/cp pid=201 old_pid=201
              cp-201     [000] .....   10.000005: sched_process_fork: comm=cp pid=201 child_comm=cp child_pid=202
           mount-202     [001] .....   10.000006: sched_process_exec: filename=/usr/bin/mount pid=202 old_pid=202
              go-900     [001] .....   10.000007: sched_process_fork: comm=go pid=900 child_comm=go child_pid=901
             vet-901     [001] .....   10.000008: sched_process_exec: filename=/usr/bin/vet pid=901 old_pid=901
`
	got := countTreeExecs(trace, map[int]bool{100: true, 101: true, 102: true})
	want := map[string]int{"kiln helper (/proc/self/exe)": 1, "cp": 1, "mount": 1}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

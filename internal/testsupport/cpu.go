package testsupport

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// userHZ (USER_HZ) is the unit of /proc/stat's and /proc/PID/stat's
// counters: 100 on every Linux architecture Go supports.
const userHZ = 100

// MachineCPU returns the CPU time every process of the machine has used
// since boot (user, nice, system, irq, softirq and steal of /proc/stat's
// "cpu" line): what a phase costs the machine, whoever spent it.
func MachineCPU(t testing.TB) time.Duration {
	t.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatalf("/proc/stat: %v", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		t.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var ticks uint64
	// user nice system idle iowait irq softirq steal: all but idle and
	// iowait.
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", line, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ //nolint:gosec // G115: ticks since boot are far below 2^63
}

// TreeCPU moves the test process into a cpuacct cgroup (v1) of its own and
// returns a function reporting the CPU time used in it so far: by this
// process and every process it starts from now on, and their children
// (a containerd started afterwards, its shims, their runc calls), but not
// the processes runc puts in a container's own cgroup. On a machine that
// other work keeps busy it tells what the tree costs where MachineCPU
// cannot. The process goes back to its cgroup on cleanup.
func TreeCPU(t testing.TB) func() time.Duration {
	t.Helper()
	NeedRoot(t)
	root := "/sys/fs/cgroup/cpuacct"
	Need(t, fileExists(filepath.Join(root, "cpuacct.usage")), "a cgroup v1 cpuacct hierarchy at "+root)
	prev, err := cgroupOf("cpuacct")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, fmt.Sprintf("kiln-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("cpuacct cgroup: %v", err)
	}
	move := func(to string) error {
		return os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	if err := move(dir); err != nil {
		_ = os.Remove(dir)
		t.Fatalf("cpuacct cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := move(filepath.Join(root, prev)); err != nil {
			t.Errorf("cpuacct cgroup: %v", err)
		}
		// Busy while processes started in it live on; they keep it.
		_ = os.Remove(dir)
	})
	return func() time.Duration {
		b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage"))
		if err != nil {
			t.Fatalf("cpuacct: %v", err)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatalf("cpuacct: %v", err)
		}
		return time.Duration(ns)
	}
}

// cgroupOf returns this process's cgroup path in the v1 hierarchy of
// controller.
func cgroupOf(controller string) (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ","+controller+",") {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("no %s cgroup in /proc/self/cgroup", controller)
}

// ProcStat is what /proc/PID/stat says of a process: its command name,
// state and parent, the CPU it used itself (utime+stime) and that of the
// children it has waited for (cutime+cstime).
type ProcStat struct {
	Comm           string
	State          byte
	PPid           int
	Self, Children time.Duration
}

// ReadProcStat reads /proc/PID/stat; a zombie still has its final times.
func ReadProcStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	s := string(data)
	// The command name, in parentheses, may hold spaces and parentheses.
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[end+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	var t [4]int64 // utime stime cutime cstime: fields 14-17
	for i := range t {
		if t[i], err = strconv.ParseInt(f[11+i], 10, 64); err != nil {
			return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
	}
	tick := time.Second / userHZ
	return ProcStat{Comm: s[open+1 : end], State: f[0][0], PPid: ppid,
		Self: time.Duration(t[0]+t[1]) * tick, Children: time.Duration(t[2]+t[3]) * tick}, nil
}

// CPUTime is the CPU time (user + system) that processes pids and their
// direct children have used so far, read from /proc (0 where there is
// none). Benchmarks report it per operation: unlike a rate, it hardly
// moves with other load on the machine.
func CPUTime(pids ...int) time.Duration {
	want := map[int]bool{}
	for _, p := range pids {
		want[p] = true
	}
	var total time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := ReadProcStat(pid)
		if err != nil || (!want[pid] && !want[st.PPid]) {
			continue
		}
		total += st.Self
	}
	return total
}

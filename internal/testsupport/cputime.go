package testsupport

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every
// Linux architecture Go supports).
const clockTicks = 100

// CPUTime is the CPU time (user + system) that processes pids and their
// direct children have used so far, read from /proc (0 where there is
// none). Benchmarks report it per operation: unlike a rate, it hardly
// moves with other load on the machine.
func CPUTime(pids ...int) time.Duration {
	want := map[int]bool{}
	for _, p := range pids {
		want[p] = true
	}
	var total int64
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces, in
		// parentheses: state ppid ... utime (14th field) stime (15th).
		_, rest, ok := strings.Cut(string(b), ") ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if !want[pid] && !want[ppid] {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += ut + st
	}
	return time.Duration(total) * time.Second / clockTicks
}

// Pid is the pid of the cluster's postmaster (its backends are its
// children).
func (p *Postgres) Pid() int {
	b, err := os.ReadFile(filepath.Join(p.Dir, "postmaster.pid"))
	if err != nil {
		p.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		p.t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

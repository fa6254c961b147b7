package worker_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// The rows of BenchmarkQueue's per-process CPU split, in table order.
const (
	cpuServer      = "kiln server"
	cpuWorker      = "kiln worker"
	cpuWorkerKids  = "kiln worker's children (helpers)"
	cpuCtrd        = "containerd"
	cpuCtrdKids    = "containerd's children (shim start)"
	cpuShims       = "shims (containerd-shim-runc-v2 daemons)"
	cpuShimKids    = "shims' children (runc, the job's processes)"
	cpuClient      = "client process (API calls)"
	cpuCtr         = "ctr processes"
	cpuOrphans     = "other orphans"
	cpuProcs       = "all of the above"
	cpuRest        = "rest of the machine"
	cpuMachineBusy = "whole machine (/proc/stat)"
)

var cpuRows = []string{cpuServer, cpuWorker, cpuWorkerKids, cpuCtrd, cpuCtrdKids, cpuShims, cpuShimKids, cpuClient, cpuCtr, cpuOrphans, cpuProcs, cpuRest, cpuMachineBusy}

// meter reads the CPU each process of the benchmark spent so far. The
// benchmark process is a child subreaper (set before containerd starts),
// so the shim daemons, which their `shim start` parent leaves behind,
// become its children: a shim that exits stays a zombie until the meter
// reads its final times and reaps it, so no short-lived shim of a raw `ctr
// run` is lost. Not safe for concurrent use.
type meter struct {
	server, worker, ctrd int
	clients              []int
	ours                 map[int]bool // children started with os/exec: never reaped here
	ctr                  time.Duration
	reaped               map[string]time.Duration
}

type cpuSample map[string]time.Duration

// children are the pids of this process's children, from every thread's
// list (a child belongs to the thread that forked it; orphans to any).
func children() ([]int, error) {
	lists, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, l := range lists {
		data, err := os.ReadFile(l)
		if err != nil {
			continue // the thread is gone
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// childPid finds this process's child whose comm is comm and whose command
// line contains arg.
func childPid(b testing.TB, comm, arg string) int {
	b.Helper()
	pids, err := children()
	if err != nil {
		b.Fatal(err)
	}
	for _, pid := range pids {
		st, err := testsupport.ReadProcStat(pid)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && st.Comm == comm && strings.Contains(string(cmdline), arg) {
			return pid
		}
	}
	b.Fatalf("no child %q with %q among %v", comm, arg, pids)
	return 0
}

// sample reads every process's CPU so far and reaps the zombie shims (and
// other orphans) after counting their final times.
func (m *meter) sample(b testing.TB) cpuSample {
	b.Helper()
	s := cpuSample{cpuMachineBusy: testsupport.MachineCPU(b), cpuCtr: m.ctr}
	read := func(pid int) testsupport.ProcStat {
		st, err := testsupport.ReadProcStat(pid)
		if err != nil {
			b.Fatalf("pid %d: %v", pid, err)
		}
		return st
	}
	st := read(m.server)
	s[cpuServer] = st.Self + st.Children
	st = read(m.worker)
	s[cpuWorker], s[cpuWorkerKids] = st.Self, st.Children
	st = read(m.ctrd)
	s[cpuCtrd], s[cpuCtrdKids] = st.Self, st.Children
	for _, pid := range m.clients {
		st = read(pid)
		s[cpuClient] += st.Self + st.Children
	}
	pids, err := children()
	if err != nil {
		b.Fatal(err)
	}
	for _, pid := range pids {
		if m.ours[pid] || pid == m.server || pid == m.worker || pid == m.ctrd {
			continue
		}
		st, err := testsupport.ReadProcStat(pid)
		if err != nil || st.Comm == "ctr" {
			continue // gone, or a ctr its exec.Cmd waits for
		}
		self, kids := cpuOrphans, cpuOrphans
		if st.Comm == "containerd-shim" { // comm is cut at 15 bytes
			self, kids = cpuShims, cpuShimKids
		}
		if st.State != 'Z' {
			s[self] += st.Self
			s[kids] += st.Children
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil || got != pid {
			continue // not reaped: counted at the next sample
		}
		m.reaped[self] += st.Self
		m.reaped[kids] += st.Children
	}
	for k, v := range m.reaped {
		s[k] += v
	}
	return s
}

// kiln is the CPU of everything that works on runs, the clients and ctr
// aside: it stops moving once a phase's background work is done.
func (s cpuSample) kiln() time.Duration {
	return s[cpuServer] + s[cpuWorker] + s[cpuWorkerKids] + s[cpuCtrd] + s[cpuCtrdKids] + s[cpuShims] + s[cpuShimKids] + s[cpuOrphans]
}

// sub is s - o, with the sum of the processes and the rest of the machine
// filled in.
func (s cpuSample) sub(o cpuSample) cpuSample {
	d := cpuSample{}
	for _, k := range cpuRows {
		switch k {
		case cpuProcs, cpuRest:
		case cpuMachineBusy:
			d[k] = s[k] - o[k]
		default:
			d[k] = s[k] - o[k]
			d[cpuProcs] += d[k]
		}
	}
	d[cpuRest] = d[cpuMachineBusy] - d[cpuProcs]
	return d
}

func (s cpuSample) add(o cpuSample) {
	for k, v := range o {
		s[k] += v
	}
}

// settle waits until the background work of the phase that just ended is
// done: a kiln run's container is deleted and its clone destroyed after
// its result is in, the warm pool refills, and a raw run's shim exits
// after `ctr run` returned. That work belongs to the phase; done in the
// next, it would be billed to the other side. Settled: the CPU of every
// process working on runs did not move for 300 ms (ticks are 10 ms).
func (m *meter) settle(b testing.TB) {
	b.Helper()
	const quiet = 3
	prev, still := time.Duration(-1), 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cur := m.sample(b).kiln()
		if cur == prev {
			if still++; still >= quiet {
				return
			}
		} else {
			still = 0
		}
		prev = cur
	}
	b.Logf("warning: the processes working on runs were still busy 30s after the phase ended")
}

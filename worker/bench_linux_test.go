package worker_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// benchRuns is the size of a throughput batch, benchSlots the worker's
// slots.
const (
	benchRuns  = 40
	benchSlots = 4
	// probeGap parts the runs of the spaced latency phases: about twice
	// a refill under the batches' load.
	probeGap = 500 * time.Millisecond
)

// stampScript prints the kernel's CLOCK_REALTIME (adjtimex, in µs) as the
// job's first instruction, comparable with the client's and the worker's
// time.Now().
const stampScript = `adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf "T=%d%06d\n", s, u}'`

// BenchmarkQueue is issue #18's benchmark: trivial runs through a real
// `kiln server` and `kiln worker` (4 slots, warm pool, the hardened
// container tier as configured by default), child processes built from
// this tree, on a containerd of the test's own, against raw `ctr run --rm
// --rootfs DIR id /bin/true` (an overlay of a busybox rootfs) run one
// after another by separate ctr processes, as a user would.
//
// The queue is driven through the HTTP API by a separate client process
// (this test binary re-executed, see serveBenchClient), never from here.
// Each of the b.N rounds runs 40 raw, then 40 `true` jobs executed at once;
// the ratios are of the sums. A phase's CPU is counted until its
// background work is done (meter.settle); its wall time ends when the
// last run's result is in.
//
// Phases, in order:
//   - quiet latency: 21 stamp runs one at a time (the first dropped), from
//     just before the API call (client process) and from the worker's
//     receipt of the lease (its "lease received" debug log) to the job's
//     first instruction; back to back, then probeGap apart;
//   - b.N interleaved throughput rounds, with whole-machine CPU (/proc/stat)
//     and the split by process (/proc/<pid>/stat);
//   - busy latency: the same latency on a second, 1-slot worker (so that
//     its runs do not wait for a slot behind the batch) while raw batches,
//     then again while kiln batches, run on the main one; then with the
//     probe's runs probeGap apart, beside kiln batches;
//   - process starts: one raw and one kiln batch with strace following
//     containerd and the shims, and a tracefs instance recording the
//     worker's descendants (execs by kind). It slows them
//     down, so it runs last and apart; KILN_BENCH_COUNT=0 skips it.
//
// Run it with (docs/benchmarks.md has its figures):
//
//	go test -run '^$' -bench Queue -benchtime 5x -timeout 40m ./worker/
//
// Not a test: `go test` (CI, KILN_LONG_TESTS) never runs it.
func BenchmarkQueue(b *testing.B) {
	testsupport.NeedRoot(b)
	ctrBin := testsupport.NeedCommand(b, "ctr")
	// Before containerd starts: the shim daemons its `shim start`
	// processes leave behind become ours, and a dead one waits for us to
	// read its times (see meter).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		b.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	b.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	kiln := testsupport.BuildKiln(b)
	srv := testsupport.StartServer(b)
	ctrd := testsupport.StartContainerd(b)
	primary := startBenchWorker(b, kiln, srv, ctrd, "main", benchSlots)
	for _, j := range []struct{ name, pool, script string }{
		{"true-main", "main", "true"},
		{"stamp-main", "main", stampScript},
		{"stamp-probe", "probe", stampScript},
	} {
		toml := fmt.Sprintf("name = %q\nimage = \"busybox\"\nscript = %q\n[constraints]\nlabels = { pool = %q }\n", j.name, j.script, j.pool)
		if _, stderr, code := srv.Run("job", "add", testsupport.WriteFile(b, j.name+".toml", toml)); code != 0 {
			b.Fatalf("job add %s: %s", j.name, stderr)
		}
	}
	client := startBenchClient(b, srv)
	m := &meter{server: srv.Pid(), worker: primary.proc.Pid(), ctrd: childPid(b, "containerd", ctrd),
		clients: []int{client.cmd.Process.Pid}, ours: map[int]bool{}, reaped: map[string]time.Duration{}}

	merged := testsupport.OverlayOf(b, testsupport.BusyboxRootfs(b))
	rawRun := 0
	rawBatch := func(n int) {
		for range n {
			rawRun++
			cmd := exec.Command(ctrBin, "--address", ctrd, "-n", "bench", "run", "--rm", "--rootfs", merged, fmt.Sprintf("raw-%d", rawRun), "/bin/true")
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("ctr run: %v %s", err, out)
			}
			m.ctr += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
	}
	kilnBatch := func(n int) {
		if _, err := client.do(fmt.Sprintf("batch true-main %d", n)); err != nil {
			b.Fatal(err)
		}
	}

	fmt.Printf("start %s, load average %s\n", time.Now().UTC().Format(time.RFC3339), loadavg(b))
	// Warm-up, unmeasured: the worker makes its shared shims and warm
	// clones, which a long-lived worker has made long before.
	rawBatch(4)
	kilnBatch(benchRuns)
	m.settle(b)

	lines, err := client.do("latency stamp-main 21")
	if err != nil {
		b.Fatal(err)
	}
	quiet := latencies(b, lines, primary.h)
	m.settle(b)
	if lines, err = client.do("latency stamp-main 21 " + probeGap.String()); err != nil {
		b.Fatal(err)
	}
	quietSpaced := latencies(b, lines, primary.h)
	m.settle(b)

	// Throughput.
	type phase struct {
		wall time.Duration
		cpu  cpuSample
	}
	measure := func(run func()) phase {
		c0, t0 := m.sample(b), time.Now()
		run()
		wall := time.Since(t0)
		m.settle(b)
		return phase{wall, m.sample(b).sub(c0)}
	}
	raw, queue := phase{cpu: cpuSample{}}, phase{cpu: cpuSample{}}
	rounds := 0
	for b.Loop() {
		r := measure(func() { rawBatch(benchRuns) })
		q := measure(func() { kilnBatch(benchRuns) })
		raw.wall += r.wall
		raw.cpu.add(r.cpu)
		queue.wall += q.wall
		queue.cpu.add(q.cpu)
		rounds++
		fmt.Printf("round %d: raw %v, kiln %v (%.2f); cpu/run raw %v, kiln %v\n", rounds,
			r.wall.Round(time.Millisecond), q.wall.Round(time.Millisecond), float64(q.wall)/float64(r.wall),
			perRun(r.cpu[cpuMachineBusy], 1), perRun(q.cpu[cpuMachineBusy], 1))
	}

	// Latency under load, on a second worker, so that its runs do not
	// wait behind the batch for a slot.
	probe := startBenchWorker(b, kiln, srv, ctrd, "probe", 1)
	m.ours[probe.proc.Pid()] = true
	probeClient := startBenchClient(b, srv)
	m.ours[probeClient.cmd.Process.Pid] = true
	if lines, err = probeClient.do("latency stamp-probe 21"); err != nil {
		b.Fatal(err)
	}
	quietProbe := latencies(b, lines, probe.h)
	m.settle(b)
	// Under load: the probes run while batches of one kind follow one
	// another on the main worker, until the probes are done.
	busy := func(probeCmd string, load func()) (latency, int) {
		type answer struct {
			lines []string
			err   error
		}
		done := make(chan answer, 1)
		go func() {
			lines, err := probeClient.do(probeCmd)
			done <- answer{lines, err}
		}()
		for batches := 0; ; batches++ {
			select {
			case a := <-done:
				if a.err != nil {
					b.Fatal(a.err)
				}
				m.settle(b)
				return latencies(b, a.lines, probe.h), batches
			default:
				load()
			}
		}
	}
	busyRaw, rawLoads := busy("latency stamp-probe 21", func() { rawBatch(benchRuns) })
	busyKiln, kilnLoads := busy("latency stamp-probe 21", func() { kilnBatch(benchRuns) })
	// Back to back, a 1-slot worker's next lease comes before its refill
	// (a clone, runc create and start, on a busy CPU) is done, so the
	// rows above time a refill. Runs arriving apart, as on a farm, time
	// the path from the lease through a warm task under that load.
	spacedKiln, spacedLoads := busy("latency stamp-probe 21 "+probeGap.String(), func() { kilnBatch(benchRuns) })

	var starts [2]map[string]int
	if os.Getenv("KILN_BENCH_COUNT") != "0" {
		strace := testsupport.NeedCommand(b, "strace")
		starts[0] = traceExecs(b, m, strace, func() { rawBatch(benchRuns) })
		starts[1] = traceExecs(b, m, strace, func() { kilnBatch(benchRuns) })
	}

	// Printed, not logged: a benchmark's log is cut at ten lines without -v.
	printf := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	printf("end %s, load average %s", time.Now().UTC().Format(time.RFC3339), loadavg(b))
	report(printf, rounds, raw.wall, queue.wall, raw.cpu, queue.cpu)
	printf("latency to the job's first instruction, p50 / p90 over 20 runs:")
	printf("| worker, machine | from the API call | from the lease's receipt |")
	printf("|---|---|---|")
	for _, l := range []struct {
		name string
		lat  latency
	}{
		{"main (4 slots), back to back, quiet", quiet},
		{fmt.Sprintf("main (4 slots), runs %v apart, quiet", probeGap), quietSpaced},
		{"probe (1 slot), back to back, quiet", quietProbe},
		{fmt.Sprintf("probe (1 slot), back to back, beside %d raw batches of 40", rawLoads), busyRaw},
		{fmt.Sprintf("probe (1 slot), back to back, beside %d kiln batches of 40", kilnLoads), busyKiln},
		{fmt.Sprintf("probe (1 slot), runs %v apart, beside %d kiln batches of 40", probeGap, spacedLoads), spacedKiln},
	} {
		printf("| %s | %v / %v | %v / %v |", l.name, pct(l.lat.api, 50), pct(l.lat.api, 90), pct(l.lat.lease, 50), pct(l.lat.lease, 90))
	}
	if starts[0] != nil {
		printf("process images started (execve/execveat) per run: strace -f on containerd and the shims; the worker's from tracefs:")
		printf("| kind | raw ctr | kiln |")
		printf("|---|---|---|")
		var kinds []string
		for _, s := range starts {
			for k := range s {
				if !slices.Contains(kinds, k) {
					kinds = append(kinds, k)
				}
			}
		}
		slices.Sort(kinds)
		for _, k := range kinds {
			printf("| %s | %.2f | %.2f |", k, float64(starts[0][k])/benchRuns, float64(starts[1][k])/benchRuns)
		}
		printf("(besides: one ctr process per raw run; one client process for all kiln runs)")
	}
	b.ReportMetric(ms(raw.wall)/float64(rounds), "raw-40-ms")
	b.ReportMetric(ms(queue.wall)/float64(rounds), "kiln-40-ms")
	b.ReportMetric(float64(queue.wall)/float64(raw.wall), "kiln/raw-wall")
	b.ReportMetric(ms(raw.cpu[cpuMachineBusy])/float64(rounds*benchRuns), "raw-cpu-ms/run")
	b.ReportMetric(ms(queue.cpu[cpuMachineBusy])/float64(rounds*benchRuns), "kiln-cpu-ms/run")
	b.ReportMetric(float64(queue.cpu[cpuMachineBusy])/float64(raw.cpu[cpuMachineBusy]), "kiln/raw-cpu")
	b.ReportMetric(float64(queue.cpu[cpuProcs])/float64(raw.cpu[cpuProcs]), "kiln/raw-procs-cpu")
	b.ReportMetric(ms(pct(quiet.api, 50)), "api-p50-ms")
	b.ReportMetric(ms(pct(quiet.lease, 50)), "lease-p50-ms")
	b.ReportMetric(ms(pct(busyKiln.api, 50)), "busy-api-p50-ms")
	b.ReportMetric(ms(pct(busyKiln.lease, 50)), "busy-lease-p50-ms")
	b.ReportMetric(ms(pct(quietSpaced.lease, 50)), "spaced-lease-p50-ms")
	b.ReportMetric(ms(pct(spacedKiln.api, 50)), "spaced-busy-api-p50-ms")
	b.ReportMetric(ms(pct(spacedKiln.lease, 50)), "spaced-busy-lease-p50-ms")
}

// benchWorker is a `kiln worker` child process with its host.
type benchWorker struct {
	h    *testsupport.Host
	proc *testsupport.Process
}

// startBenchWorker starts a worker labelled pool=name with the busybox
// image, logging at debug level for its "lease received" lines.
func startBenchWorker(b *testing.B, kiln string, srv *testsupport.TestServer, ctrd, name string, slots int) benchWorker {
	b.Helper()
	h := testsupport.NewHost(b, kiln, ctrd, fmt.Sprintf("[server]\nslots = %d\nwarm_pool = true\n", slots))
	h.MustKiln(b, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	testsupport.EnrollWorker(b, srv, h, srv.URL, "bench-"+name, "pool="+name)
	return benchWorker{h, testsupport.StartWorker(b, h, "-v")}
}

type latency struct{ api, lease []time.Duration }

// latencies reads a latency answer, drops its first run, and matches each
// run with the worker's receipt of its lease in the worker's log.
func latencies(b *testing.B, lines []string, h *testsupport.Host) latency {
	b.Helper()
	received := leaseReceipts(b, filepath.Join(h.Dir, "worker.log"))
	var l latency
	for i, line := range lines {
		var id string
		var api, first int64
		if _, err := fmt.Sscanf(line, "run %s %d %d", &id, &api, &first); err != nil {
			b.Fatalf("client answered %q: %v", line, err)
		}
		if i == 0 {
			continue
		}
		lease, ok := received[id]
		if !ok {
			b.Fatalf("run %s: no \"lease received\" line in the worker's log", id)
		}
		l.api = append(l.api, time.Duration(first-api))
		l.lease = append(l.lease, time.Duration(first-lease))
	}
	return l
}

// leaseReceipts maps run IDs to the worker's receipt of their lease
// (CLOCK_REALTIME ns) from its debug log.
func leaseReceipts(b *testing.B, logPath string) map[string]int64 {
	b.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	at := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `msg="lease received"`) {
			continue
		}
		var run string
		var ns int64
		for _, kv := range strings.Fields(sc.Text()) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "run":
				run = strings.Trim(v, `"`)
			case "unix_ns":
				ns, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		at[run] = ns
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return at
}

// loadavg is /proc/loadavg's 1, 5 and 15 minute load averages.
func loadavg(b *testing.B) string {
	b.Helper()
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatal(err)
	}
	return strings.Join(strings.Fields(string(data))[:3], ", ")
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(100 * time.Microsecond)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func perRun(d time.Duration, rounds int) time.Duration {
	return (d / time.Duration(rounds*benchRuns)).Round(100 * time.Microsecond)
}

func report(printf func(string, ...any), rounds int, rawWall, queueWall time.Duration, raw, queue cpuSample) {
	printf("%d rounds of %d runs; sums: raw %v, kiln %v: kiln / raw wall time %.2f", rounds, benchRuns,
		rawWall.Round(time.Millisecond), queueWall.Round(time.Millisecond), float64(queueWall)/float64(rawWall))
	printf("CPU per run (ms):")
	printf("| process | raw ctr run | kiln |")
	printf("|---|---|---|")
	for _, k := range cpuRows {
		printf("| %s | %.1f | %.1f |", k, ms(raw[k])/float64(rounds*benchRuns), ms(queue[k])/float64(rounds*benchRuns))
	}
	printf("kiln / raw CPU: whole machine %.2f, the processes above %.2f",
		float64(queue[cpuMachineBusy])/float64(raw[cpuMachineBusy]), float64(queue[cpuProcs])/float64(raw[cpuProcs]))
}

// traceExecs runs phase with strace following containerd and the live
// shim daemons, and counts the process images they and their descendants
// started, by kind; the worker's descendants' by program ("worker: ...",
// traceWorkerExecs).
func traceExecs(b *testing.B, m *meter, strace string, phase func()) map[string]int {
	b.Helper()
	pids := []string{strconv.Itoa(m.ctrd)}
	kids, err := children()
	if err != nil {
		b.Fatal(err)
	}
	for _, pid := range kids {
		if st, err := testsupport.ReadProcStat(pid); err == nil && st.Comm == "containerd-shim" && st.State != 'Z' {
			pids = append(pids, strconv.Itoa(pid))
		}
	}
	out := filepath.Join(b.TempDir(), "execs")
	cmd := exec.Command(strace, "-f", "-qq", "-s", "100", "-e", "trace=execve,execveat", "-e", "signal=none", "-o", out, "-p", strings.Join(pids, ","))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	m.ours[cmd.Process.Pid] = true
	waitTraced(b, pids, cmd.Process.Pid)
	worker := traceWorkerExecs(b, m, phase)
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait() // it detaches, then dies of the signal
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	counts := countExecs(string(data))
	for k, n := range worker {
		counts["worker: "+k] += n
	}
	return counts
}

// traceWorkerExecs runs phase (and settles) while a private tracefs
// instance records every fork and exec on the machine, and counts the
// execs of the worker's descendants by program. Not strace: the worker
// traces a child of its own to make a user namespace, and a process has
// one tracer at most. The kernel's exec event has the program, not the
// arguments.
func traceWorkerExecs(b *testing.B, m *meter, phase func()) map[string]int {
	b.Helper()
	mountTracefs(b)
	inst := fmt.Sprintf("/sys/kernel/tracing/instances/kiln-bench-%d", os.Getpid())
	if err := os.Mkdir(inst, 0o700); err != nil {
		b.Fatalf("tracefs instance: %v", err)
	}
	defer func() {
		if err := unix.Rmdir(inst); err != nil {
			b.Errorf("remove tracefs instance %s: %v", inst, err)
		}
	}()
	write := func(file, v string) {
		if err := os.WriteFile(filepath.Join(inst, file), []byte(v), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	write("buffer_size_kb", "32768") // per CPU; the whole machine forks and execs
	write("events/sched/sched_process_fork/enable", "1")
	write("events/sched/sched_process_exec/enable", "1")
	phase()
	m.settle(b)
	write("tracing_on", "0")
	data, err := os.ReadFile(filepath.Join(inst, "trace"))
	if err != nil {
		b.Fatal(err)
	}
	if lost := traceOverruns(inst); lost > 0 {
		b.Logf("warning: the trace lost %d events; the worker's exec counts are low", lost)
	}
	// The worker's threads: a helper is forked by any of them.
	tree := map[int]bool{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", m.worker))
	for _, t := range tasks {
		if tid, err := strconv.Atoi(filepath.Base(t)); err == nil {
			tree[tid] = true
		}
	}
	return countTreeExecs(string(data), tree)
}

// traceOverruns sums the events each CPU's buffer of the instance dropped.
func traceOverruns(inst string) int {
	stats, _ := filepath.Glob(filepath.Join(inst, "per_cpu/cpu*/stats"))
	lost := 0
	for _, st := range stats {
		data, _ := os.ReadFile(st)
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "overrun: "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				lost += n
			}
		}
	}
	return lost
}

var (
	forkEvent = regexp.MustCompile(`sched_process_fork: comm=.* pid=(\d+) child_comm=.* child_pid=(\d+)`)
	execEvent = regexp.MustCompile(`sched_process_exec: filename=(\S+) pid=(\d+) old_pid=(\d+)`)
)

// countTreeExecs counts, in a tracefs trace of fork and exec events (in
// time order), the execs of the processes descending from tree's, by
// program. Threads are tasks like any other: a fork event names the
// forking thread.
func countTreeExecs(trace string, tree map[int]bool) map[string]int {
	counts := map[string]int{}
	for _, l := range strings.Split(trace, "\n") {
		if mm := forkEvent.FindStringSubmatch(l); mm != nil {
			parent, _ := strconv.Atoi(mm[1])
			child, _ := strconv.Atoi(mm[2])
			if tree[parent] {
				tree[child] = true
			}
		} else if mm := execEvent.FindStringSubmatch(l); mm != nil {
			pid, _ := strconv.Atoi(mm[2])
			old, _ := strconv.Atoi(mm[3])
			if tree[old] || tree[pid] {
				tree[pid] = true
				name := filepath.Base(mm[1])
				if mm[1] == "/proc/self/exe" {
					name = "kiln helper (/proc/self/exe)"
				}
				counts[name]++
			}
		}
	}
	return counts
}

// waitTraced waits until strace has attached to every thread of pids.
func waitTraced(b *testing.B, pids []string, tracer int) {
	b.Helper()
	want := "TracerPid:\t" + strconv.Itoa(tracer) + "\n"
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		all := true
		for _, pid := range pids {
			tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/status")
			for _, t := range tasks {
				if s, err := os.ReadFile(t); err == nil && !strings.Contains(string(s), want) {
					all = false
				}
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("strace did not attach to %v within 30s", pids)
		}
	}
}

var execLine = regexp.MustCompile(`^(\d+) +execve(?:at)?\((?:\d+, )?"([^"]*)", \[([^\]]*)\]`)

// countExecs counts the successful execs in strace -f output by kind. An
// exec that strace shows unfinished and never resumed in the same pid
// succeeded in a multi-threaded process (the thread took the leader's pid).
func countExecs(trace string) map[string]int {
	counts := map[string]int{}
	pending := map[string]string{}
	for _, line := range strings.Split(trace, "\n") {
		if mm := execLine.FindStringSubmatch(line); mm != nil {
			kind := execKind(mm[2], mm[3])
			switch {
			case strings.HasSuffix(line, "<unfinished ...>"):
				pending[mm[1]] = kind
			case strings.Contains(line, ") = 0"):
				counts[kind]++
			}
			continue
		}
		pid, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		if kind, ok := pending[pid]; ok && strings.Contains(rest, "resumed>") {
			if strings.Contains(rest, "= 0") {
				counts[kind]++
			}
			delete(pending, pid)
		}
	}
	for _, kind := range pending {
		counts[kind]++
	}
	return counts
}

var runcCommands = []string{"create", "start", "delete", "kill", "state", "exec", "update", "pause", "resume", "ps", "events", "features", "init"}

// execKind names an exec by its program and arguments (strace's quoted,
// comma-separated argv).
func execKind(path, argv string) string {
	var args []string
	for _, a := range strings.Split(argv, ", ") {
		args = append(args, strings.Trim(a, `"`))
	}
	name := filepath.Base(path)
	if len(args) > 0 && args[0] != "" {
		name = filepath.Base(args[0])
	}
	switch name {
	case "runc":
		for _, a := range args[1:] {
			if slices.Contains(runcCommands, a) {
				return "runc " + a
			}
		}
		return "runc"
	case "containerd-shim-runc-v2":
		switch args[len(args)-1] {
		case "start", "delete":
			return "shim " + args[len(args)-1]
		}
		return "shim daemon"
	}
	return "other: " + name
}

// mountTracefs mounts tracefs at /sys/kernel/tracing when nothing is
// there yet (a fresh machine, a container's /sys): the benchmark mounts
// what it needs. What it mounted stays: it is the kernel's usual place.
func mountTracefs(b *testing.B) {
	b.Helper()
	const dir = "/sys/kernel/tracing"
	if _, err := os.Stat(filepath.Join(dir, "instances")); err == nil {
		return
	}
	if err := unix.Mount("tracefs", dir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		b.Fatalf("mount tracefs at %s (the benchmark counts the worker's execs with it): %v", dir, err)
	}
	b.Logf("mounted tracefs at %s", dir)
}

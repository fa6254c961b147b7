package worker_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// BenchmarkQueue compares 40 trivial runs through server + one worker (4
// slots, KILN_BENCH_SLOTS to change) with 40 raw `ctr run --rm` one after
// another, all in this process, and measures dispatch-to-first-instruction
// (from `job execute` returning to the job's first command, read from the
// kernel clock inside the sandbox) with and without the warm pool. Goal:
// queue <= 0.5 x raw.
//
// Each of the b.N rounds runs the raw batch, then the batch through the
// worker without a warm pool, then through the one with it, so that all
// three see the same machine: on a shared VM the cost of the very same
// work drifts by +-20% within a minute. The ratios are of the sums.
//
//	go test -run '^$' -bench Queue -benchtime 5x ./worker/
func BenchmarkQueue(b *testing.B) {
	testsupport.NeedRoot(b)
	ctrBin := testsupport.NeedCommand(b, "ctr")
	kiln := testsupport.BuildKiln(b)
	srv := testsupport.StartServer(b)
	ctrd := testsupport.StartContainerd(b)
	cl := &cluster{srv: srv, ctrd: ctrd, kiln: kiln}
	const n = 40
	slots := 4
	if v := os.Getenv("KILN_BENCH_SLOTS"); v != "" {
		var err error
		if slots, err = strconv.Atoi(v); err != nil || slots < 1 {
			b.Fatalf("KILN_BENCH_SLOTS=%q: want a positive number", v)
		}
	}
	// The baseline's rootfs: an overlay of a busybox tree, mounted once.
	merged := testsupport.OverlayOf(b, testsupport.BusyboxRootfs(b))
	rawRun := 0
	rawBatch := func() {
		for i := 0; i < n; i++ {
			rawRun++
			if out, err := exec.Command(ctrBin, "--address", ctrd, "-n", "bench", "run", "--rm", "--rootfs", merged, fmt.Sprintf("raw-%d", rawRun), "/bin/true").CombinedOutput(); err != nil {
				b.Fatalf("ctr run: %v %s", err, out)
			}
		}
	}

	ctx := context.Background()
	pools := []string{"cold", "warm"}
	p50 := map[string]time.Duration{}
	for _, name := range pools {
		h := testsupport.NewHost(b, kiln, ctrd, fmt.Sprintf("[server]\nheartbeat = \"1s\"\nslots = %d\nwarm_pool = %v\n", slots, name == "warm"))
		h.MustKiln(b, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
		testsupport.EnrollWorker(b, srv, h, srv.URL, "bench-"+name, "pool="+name)
		testsupport.StartWorker(b, h)
		j, err := api.ParseJobFile([]byte(fmt.Sprintf(`name = %q
image = "busybox"
script = "adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf \"T=%%d%%06d\\n\", s, u}'"
[constraints]
labels = { pool = %q }
`, "bench-"+name, name)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cl.client().AddJob(ctx, j); err != nil {
			b.Fatal(err)
		}
		// The throughput batches run what the raw baseline runs.
		j, err = api.ParseJobFile([]byte(fmt.Sprintf("name = %q\nimage = \"busybox\"\nscript = \"true\"\n[constraints]\nlabels = { pool = %q }\n", "true-"+name, name)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cl.client().AddJob(ctx, j); err != nil {
			b.Fatal(err)
		}
		// Latency: one run at a time.
		var lat []time.Duration
		for i := 0; i < 21; i++ {
			start := time.Now()
			id := benchExecute(b, cl, "bench-"+name)
			benchWait(b, cl, id)
			var sb strings.Builder
			cl.client().FollowLog(ctx, id, &sb)
			at := parseT(sb.String())
			if at.IsZero() {
				b.Fatalf("no timestamp in console: %q", sb.String())
			}
			if i > 0 { // the first run of a pool has no warm clone yet
				lat = append(lat, at.Sub(start))
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		p50[name] = lat[len(lat)/2]
	}
	queueBatch := func(job string) {
		var ids []string
		for i := 0; i < n; i++ {
			ids = append(ids, benchExecute(b, cl, job))
		}
		for _, id := range ids {
			if r := benchWait(b, cl, id); r.State != api.StateSucceeded {
				b.Fatalf("run %s: %s %s", id, r.State, r.Error)
			}
		}
	}

	// Throughput: rounds of 40 at once.
	var raw, rawCPU time.Duration
	queue, queueCPU := map[string]time.Duration{}, map[string]time.Duration{}
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		t0, c0 := time.Now(), cpuBusy(b)
		rawBatch()
		raw += time.Since(t0)
		rawCPU += cpuBusy(b) - c0
		line := fmt.Sprintf("round %d: raw %v", round, time.Since(t0))
		for _, name := range pools {
			t0, c0 := time.Now(), cpuBusy(b)
			queueBatch("true-" + name)
			queue[name] += time.Since(t0)
			queueCPU[name] += cpuBusy(b) - c0
			line += fmt.Sprintf(", %s %v", name, time.Since(t0))
		}
		b.Log(line)
	}
	perBatch := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	perRun := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N*n) }
	b.ReportMetric(perBatch(raw), "raw-ctr-40-ms")
	b.ReportMetric(perRun(rawCPU), "raw-cpu-ms/run")
	for _, name := range pools {
		b.ReportMetric(perBatch(queue[name]), name+"-queue-40-ms")
		b.ReportMetric(perRun(queueCPU[name]), name+"-cpu-ms/run")
		b.ReportMetric(float64(queue[name])/float64(raw), name+"-queue/raw")
		b.ReportMetric(float64(p50[name].Microseconds())/1000, name+"-p50-dispatch-ms")
	}
}

func benchExecute(b *testing.B, cl *cluster, job string) string {
	r, err := cl.client().ExecuteJobWith(context.Background(), job, api.ExecuteRequest{})
	if err != nil {
		b.Fatal(err)
	}
	return r.ID
}

// benchWait waits for run id to end by following its log: the server
// answers when the run ends, where polling would add its own load.
func benchWait(b *testing.B, cl *cluster, id string) *api.Run {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := cl.client().FollowLog(ctx, id, io.Discard)
	if err != nil {
		b.Fatalf("run %s: %v", id, err)
	}
	return r
}

// cpuBusy is the machine's CPU time spent outside idle and iowait so far,
// from /proc/stat: what a phase costs every process together, the kernel's
// work for them (mounts, namespaces, cgroups) included.
func cpuBusy(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait, guest (already in user)
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %q: %v", line, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}

func parseT(console string) time.Time {
	for _, l := range strings.Split(console, "\n") {
		if v, ok := strings.CutPrefix(l, "T="); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return time.UnixMicro(us)
			}
		}
	}
	return time.Time{}
}

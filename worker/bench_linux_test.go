package worker_test

import (
	"context"
	"fmt"
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

// BenchmarkQueue compares 40 trivial runs through server + one worker (2
// slots) with 40 raw `ctr run --rm` one after another, all in this process,
// and measures dispatch-to-first-instruction (from `job execute` returning
// to the job's first command, read from the kernel clock inside the
// sandbox) with and without the warm pool. Goal: queue <= 0.5 x raw.
//
//	go test -run '^$' -bench Queue -benchtime 1x ./worker/
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

	// Baseline: raw ctr run --rm on an overlay of a busybox rootfs.
	rootfs := testsupport.BusyboxRootfs(b)
	// The baseline's rootfs: an overlay of the same tree, mounted once.
	merged := testsupport.OverlayOf(b, rootfs)
	t0, c0 := time.Now(), cpuBusy(b)
	for i := 0; i < n; i++ {
		if out, err := exec.Command(ctrBin, "--address", ctrd, "-n", "bench", "run", "--rm", "--rootfs", merged, fmt.Sprintf("raw-%d", i), "/bin/true").CombinedOutput(); err != nil {
			b.Fatalf("ctr run: %v %s", err, out)
		}
	}
	raw := time.Since(t0)
	b.ReportMetric(float64(raw.Milliseconds()), "raw-ctr-40-ms")
	b.ReportMetric(float64((cpuBusy(b)-c0).Milliseconds())/n, "raw-cpu-ms/run")

	ctx := context.Background()
	for _, warm := range []bool{false, true} {
		name := map[bool]string{false: "cold", true: "warm"}[warm]
		h := testsupport.NewHost(b, kiln, ctrd, fmt.Sprintf("[server]\nheartbeat = \"1s\"\nslots = %d\nwarm_pool = %v\n", slots, warm))
		h.MustKiln(b, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
		testsupport.EnrollWorker(b, srv, h, srv.URL, "bench-"+name, "pool="+name)
		w := testsupport.StartWorker(b, h)
		job := "bench-" + name
		j, err := api.ParseJobFile([]byte(fmt.Sprintf(`name = %q
image = "busybox"
script = "adjtimex | awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf \"T=%%d%%06d\\n\", s, u}'"
[constraints]
labels = { pool = %q }
`, job, name)))
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
			id := benchExecute(b, cl, job)
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
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, name+"-p50-dispatch-ms")
		// Throughput: 40 at once.
		t0, c0 := time.Now(), cpuBusy(b)
		var ids []string
		for i := 0; i < n; i++ {
			ids = append(ids, benchExecute(b, cl, job))
		}
		for _, id := range ids {
			if r := benchWait(b, cl, id); r.State != api.StateSucceeded {
				b.Fatalf("run %s: %s %s", id, r.State, r.Error)
			}
		}
		q := time.Since(t0)
		b.ReportMetric(float64(q.Milliseconds()), name+"-queue-40-ms")
		b.ReportMetric(float64((cpuBusy(b)-c0).Milliseconds())/n, name+"-cpu-ms/run")
		b.ReportMetric(float64(q)/float64(raw), name+"-queue/raw")
		w.Term()
	}
}

func benchExecute(b *testing.B, cl *cluster, job string) string {
	r, err := cl.client().ExecuteJob(context.Background(), job)
	if err != nil {
		b.Fatal(err)
	}
	return r.ID
}

func benchWait(b *testing.B, cl *cluster, id string) *api.Run {
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r, err := cl.client().GetRun(context.Background(), id)
		if err == nil && api.Terminal(r.State) {
			return r
		}
	}
	b.Fatalf("run %s did not finish", id)
	return nil
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

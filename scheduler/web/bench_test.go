package web_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// seedRuns writes n ended runs of 20 jobs on 10 hosts straight into the
// server's database (through the API this would take hours), the way the
// server stores them: the benchmark measures reading a big store, not
// filling it.
func seedRuns(b *testing.B, srv *testsupport.InProcessServer, n int) {
	b.Helper()
	ctx := context.Background()
	for j := 0; j < 20; j++ {
		if _, err := srv.Admin.AddJob(ctx, &api.Job{Name: fmt.Sprintf("job%d", j), Image: "busybox", Script: "true"}); err != nil {
			b.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(srv.DataDir, "kiln.db")+"?_pragma=busy_timeout(10000)&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	st, err := tx.Prepare(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, host, started, finished, exit_code, log_len, log_stored)
		VALUES (?, 1, ?, 1, ?, ?, ?, ?, ?, ?, ?, 100, 100)`)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now().Add(-time.Duration(n) * time.Minute).UnixNano()
	for i := 0; i < n; i++ {
		state, exit := api.StateSucceeded, 0
		if i%7 == 0 {
			state, exit = api.StateFailed, 1
		}
		trigger := "execute"
		if i%3 == 0 {
			trigger = "schedule"
		}
		created := t0 + int64(i)*int64(time.Minute)
		if _, err := st.Exec(fmt.Sprintf("job%d", i%20), state, trigger, created, created, fmt.Sprintf("host%d", i%10),
			created+int64(time.Second), created+int64(40*time.Second), exit); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}

// timeGets fetches url b.N times and reports the p50 and p99 latency of a
// whole answer (status, headers and body read).
func timeGets(b *testing.B, c *http.Client, url string, check func(body string) bool) {
	b.Helper()
	lat := make([]time.Duration, 0, b.N)
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
		}
		if i == 0 && !check(string(body)) {
			b.Fatalf("GET %s: unexpected page", url)
		}
	}
	b.StopTimer()
	// CPU time per page (server and client in this process): what a page
	// costs when the machine is not shared, unlike the latencies.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "p99-ms")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFrontPage renders the front page (50 newest runs, filtered or
// not) of a store holding 100,000 runs, through HTTP.
//
//	go test -run '^$' -bench BenchmarkFrontPage -benchtime 2000x ./scheduler/web/
func BenchmarkFrontPage(b *testing.B) {
	srv := testsupport.StartInProcessServer(b, "[ui]", "public = true")
	seedRuns(b, srv, 100_000)
	c := &http.Client{}
	for _, tc := range []struct{ name, query string }{
		{"all", "/"},
		{"job", "/?job=job7"},
		{"state", "/?state=failed"},
		{"host", "/?host=host3"},
		{"job+state", "/?job=job7&state=failed"},
		{"paged", "/?before=50000"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			timeGets(b, c, srv.URL+tc.query, func(body string) bool { return strings.Count(body, `<tr class="st-`) == 50 })
		})
	}
}

// BenchmarkRunPage64MiB opens the run page of a run whose console is
// 64 MiB (the default console_cap): the tail, a page back from it, a line
// in the middle, and a search over the whole console.
//
//	go test -run '^$' -bench BenchmarkRunPage64MiB -benchtime 50x ./scheduler/web/
func BenchmarkRunPage64MiB(b *testing.B) {
	srv := testsupport.StartInProcessServer(b, "[ui]", "public = true")
	ctx := context.Background()
	if _, err := srv.Admin.AddJob(ctx, &api.Job{Name: "big", Image: "busybox", Script: "true"}); err != nil {
		b.Fatal(err)
	}
	if _, err := srv.Admin.ExecuteJobWith(ctx, "big", api.ExecuteRequest{}); err != nil {
		b.Fatal(err)
	}
	w := testsupport.EnrollFakeWorker(b, srv.URL, srv.Admin, "w1", testsupport.DefaultFacts("busybox"))
	a := w.Lease()
	// 64 MiB of 80-byte lines, every fourth one coloured.
	var chunk strings.Builder
	line, lines := 0, 0
	const size = 64 << 20
	for written := 0; written < size; {
		chunk.Reset()
		for chunk.Len() < 1<<20-200 {
			line++
			if line%4 == 0 {
				fmt.Fprintf(&chunk, "\x1b[32mok\x1b[0m   step %09d: compiling src/module_%05d.c with -O2 ...\n", line, line%99999)
			} else {
				fmt.Fprintf(&chunk, "step %09d: compiling src/module_%05d.c with -O2 -g -Wall ........\n", line, line%99999)
			}
		}
		data := chunk.String()
		if written+len(data) > size {
			data = data[:size-written]
		}
		w.Log(a, []byte(data))
		written += len(data)
		lines += strings.Count(data, "\n")
	}
	w.Finish(a, api.ResultRequest{ExitCode: 0})
	c := &http.Client{}
	base := srv.URL + "/runs/" + a.RunID
	// The very first open also indexes the console's line numbers.
	start := time.Now()
	resp, err := c.Get(base)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	b.Logf("first open of the 64 MiB console (indexing its lines): %v", time.Since(start).Round(time.Millisecond))
	for _, tc := range []struct{ name, query, want string }{
		{"tail", "", fmt.Sprintf(`data-n="%d"`, lines)},
		{"page-back", fmt.Sprintf("?before=%d", size-(1<<20)), "Earlier output"},
		{"line", fmt.Sprintf("?line=%d", lines/2), fmt.Sprintf(`id="L%d"`, lines/2)},
		{"search", "?q=module_12345.c", "matching lines"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			timeGets(b, c, base+tc.query, func(body string) bool { return strings.Contains(body, tc.want) })
		})
	}
}

package scheduler_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// benchWorkers is how many simulated workers long-poll the server.
const benchWorkers = 64

func benchClient(c *api.Client) *api.Client {
	c.HTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}}
	return c
}

// fsyncRate measures synchronous 4 KiB writes per second in dir: the floor
// under any durable commit rate.
func fsyncRate(b *testing.B, dir string) float64 {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	n := 0
	start := time.Now()
	for time.Since(start) < time.Second {
		if _, err := f.WriteAt(buf, int64(n%16)*4096); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkQueue measures, through the real HTTP API of real server
// processes: end-to-end runs/s (execute + lease + result, with
// benchWorkers workers long-polling), the p50/p99 latency from the start of
// `execute` to a waiting worker's lease answer, the disk's fsync rate, and
// the CPU time the servers and the database (its postmaster and backends)
// used per run; on SQLite, and
// on PostgreSQL (fsync on, synchronous_commit on) with one and two
// replicas (workers and clients spread over both).
//
// sqlite-needs10 is sqlite with the executed job the root of a graph of
// 10 jobs (it needs 9, which succeeded once before): each execute
// resolves the graph (every need by its succeeded run of a matching key)
// and each lease places the needs; compare its p50-dispatch-ms with
// sqlite's.
//
//	go test -run '^$' -bench BenchmarkQueue -benchtime 20000x ./scheduler/
func BenchmarkQueue(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		benchQueue(b, []*testsupport.TestServer{testsupport.StartServerOn(b, "", "", `lease_duration = "10m"`)}, nil)
	})
	b.Run("sqlite-needs10", func(b *testing.B) {
		benchGraph = 10
		defer func() { benchGraph = 0 }()
		benchQueue(b, []*testsupport.TestServer{testsupport.StartServerOn(b, "", "", `lease_duration = "10m"`)}, nil)
	})
	for _, n := range []int{1, 2} {
		b.Run(fmt.Sprintf("postgres-%d", n), func(b *testing.B) {
			pg := testsupport.StartPostgres(b, "fsync = on", "shared_buffers = 128MB")
			url := pg.NewDatabase()
			var srvs []*testsupport.TestServer
			dataDir := ""
			for range n {
				s := testsupport.StartServerOn(b, url, dataDir, `lease_duration = "10m"`)
				dataDir = s.DataDir
				srvs = append(srvs, s)
			}
			benchQueue(b, srvs, pg)
		})
	}
}

// benchQueue also reports the CPU time the servers and PostgreSQL (pg,
// nil for none) used per run, each apart: other load on the machine
// hardly changes it.
func benchQueue(b *testing.B, srvs []*testsupport.TestServer, pg *testsupport.Postgres) {
	srv := srvs[0]
	if os.Getenv("KILN_CPUPROFILE") != "" {
		// A server writes its CPU profile when it exits by SIGTERM, not
		// by the SIGKILL of the test's cleanup.
		b.Cleanup(func() {
			for _, s := range srvs {
				s.Stop()
			}
		})
	}
	var pids []int
	for _, s := range srvs {
		pids = append(pids, s.Pid())
	}
	dbPid := -1 // none
	if pg != nil {
		dbPid = pg.Pid()
	}
	ctx := context.Background()
	admin := benchClient(srv.ClientWith(srv.AdminToken()))
	addGraphB(b, admin, benchGraph)
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1
	workers := make([]*rawClient, benchWorkers)
	for i := range workers {
		tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: fmt.Sprintf("w%d", i), Facts: facts})
		if err != nil {
			b.Fatal(err)
		}
		workers[i] = &rawClient{addr: srvs[i%len(srvs)].Addr, token: resp.Token}
		defer workers[i].close()
	}
	leaseBody, err := json.Marshal(api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)})
	if err != nil {
		b.Fatal(err)
	}
	floor := fsyncRate(b, srv.DataDir)

	var leasedAt sync.Map // run ID -> time.Time the worker got it
	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var result []byte
			for {
				select {
				case <-stop:
					return
				default:
				}
				var a struct {
					RunID string `json:"run_id"`
					Fence string `json:"fence"`
				}
				got, err := w.post("/v1/worker/lease", leaseBody, &a)
				if err != nil {
					b.Error(err)
					return
				}
				if !got {
					continue
				}
				leasedAt.Store(a.RunID, time.Now())
				result = append(append(append(result[:0], `{"fence":`...), strconv.Quote(a.Fence)...), `,"exit_code":0}`...)
				if _, err := w.post("/v1/worker/runs/"+a.RunID+"/result", result, nil); err != nil {
					b.Error(err)
					return
				}
				done.Add(1)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	// A graph's needs run once first: the executes below find them.
	warm := int64(0)
	if benchGraph > 0 {
		if _, err := admin.ExecuteJobWith(ctx, "bench", api.ExecuteRequest{}); err != nil {
			b.Fatal(err)
		}
		warm = int64(benchGraph)
		for done.Load() < warm {
			time.Sleep(time.Millisecond)
		}
	}

	// Latency: one execute at a time, every worker idle and waiting.
	const probes = 300
	var lat []time.Duration
	for range probes {
		t0 := time.Now()
		r, err := admin.ExecuteJobWith(ctx, "bench", api.ExecuteRequest{})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if v, ok := leasedAt.Load(r.ID); ok {
				lat = append(lat, v.(time.Time).Sub(t0))
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	for done.Load() < warm+probes {
		time.Sleep(time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })

	// Throughput: b.N runs executed by 16 clients, drained by the workers.
	base := done.Load()
	b.ResetTimer()
	srvCPU0, dbCPU0, selfCPU0 := testsupport.CPUTime(pids...), testsupport.CPUTime(dbPid), selfCPU(b)
	start := time.Now()
	var next atomic.Int64
	var ewg sync.WaitGroup
	for i := range 16 {
		c := &rawClient{addr: srvs[i%len(srvs)].Addr, token: srv.AdminToken()}
		defer c.close()
		ewg.Add(1)
		go func() {
			defer ewg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := c.post("/v1/jobs/bench/runs", []byte("{}"), nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	ewg.Wait()
	for done.Load()-base < int64(b.N) && !b.Failed() {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	srvCPU, dbCPU, benchCPU := testsupport.CPUTime(pids...)-srvCPU0, testsupport.CPUTime(dbPid)-dbCPU0, selfCPU(b)-selfCPU0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "runs/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-dispatch-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-dispatch-ms")
	b.ReportMetric(floor, "fsync/s")
	b.ReportMetric(float64(srvCPU.Microseconds())/1000/float64(b.N), "server-cpu-ms/run")
	b.ReportMetric(float64(dbCPU.Microseconds())/1000/float64(b.N), "db-cpu-ms/run")
	b.ReportMetric(float64(benchCPU.Microseconds())/1000/float64(b.N), "bench-cpu-ms/run")
	b.ReportMetric(0, "ns/op")
}

// selfCPU is the CPU time (user and system) this process has used: the
// simulated workers and clients share the machine's cores with the
// servers and the database, so their cost counts too.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawClient is one keep-alive HTTP/1.1 connection to a server's API,
// used by one goroutine at a time. The benchmark's 64 workers and 16
// clients share the machine's 2 cores with the servers and the database:
// through net/http's client (two goroutines per connection, a request
// and header maps per call, a decoder per answer) they cost about as
// much CPU per run as the servers. This sends the same requests to the
// same API, synchronously, and decodes only what the benchmark reads.
type rawClient struct {
	addr, token string
	conn        net.Conn
	r           *bufio.Reader
	req         []byte
	answer      bytes.Buffer
}

// post sends body to path; a 2xx answer with a body is decoded into out
// (if not nil) and reported true, a 204 false; anything else is an error.
func (c *rawClient) post(path string, body []byte, out any) (bool, error) {
	if c.conn == nil {
		conn, err := net.Dial("tcp", c.addr)
		if err != nil {
			return false, err
		}
		c.conn, c.r = conn, bufio.NewReader(conn)
	}
	c.req = append(c.req[:0], "POST "...)
	c.req = append(c.req, path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.addr...)
	c.req = append(c.req, "\r\nAuthorization: Bearer "...)
	c.req = append(c.req, c.token...)
	c.req = append(c.req, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	c.req = strconv.AppendInt(c.req, int64(len(body)), 10)
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, body...)
	if _, err := c.conn.Write(c.req); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return false, err
	}
	c.answer.Reset()
	_, err = c.answer.ReadFrom(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return false, err
	case resp.StatusCode == http.StatusNoContent:
		return false, nil
	case resp.StatusCode >= 300:
		return false, fmt.Errorf("POST %s: %s: %s", path, resp.Status, c.answer.Bytes())
	case out != nil:
		return true, json.Unmarshal(c.answer.Bytes(), out)
	}
	return true, nil
}

func (c *rawClient) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

// benchGraph, when above 1, makes the bench job the root of a graph of
// that many jobs: it needs benchGraph-1 others (BenchmarkQueue's
// sqlite-needs10).
var benchGraph int

// addGraphB adds the bench job, needing n-1 jobs when n > 1.
func addGraphB(b *testing.B, c *api.Client, n int) {
	if n <= 1 {
		addJobB(b, c)
		return
	}
	file := "name = \"bench\"\nimage = \"bookworm\"\nscript = \"true\"\n"
	for i := range n - 1 {
		j, err := api.ParseJobFile([]byte(fmt.Sprintf("name = \"dep%d\"\nimage = \"bookworm\"\nscript = \"true\"\n", i)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.AddJob(context.Background(), j); err != nil {
			b.Fatal(err)
		}
		file += fmt.Sprintf("[[needs]]\njob = \"dep%d\"\n", i)
	}
	j, err := api.ParseJobFile([]byte(file))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.AddJob(context.Background(), j); err != nil {
		b.Fatal(err)
	}
}

func addJobB(b *testing.B, c *api.Client) {
	j, err := api.ParseJobFile([]byte("name = \"bench\"\nimage = \"bookworm\"\nscript = \"true\"\n"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.AddJob(context.Background(), j); err != nil {
		b.Fatal(err)
	}
}

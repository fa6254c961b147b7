package scheduler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// fairOwners is how many owners BenchmarkQueueFair's runs belong to.
const fairOwners = 50

// BenchmarkQueueFair is BenchmarkQueue with the runs of fairOwners
// owners (client tokens, each with a job of its own) of unequal backlogs:
// owner k queues a share of b.N proportional to 1/(k+1) (owner 0 about a
// fifth, owner 49 a few runs), in random order, and owners 0-4 have
// share 2, so that every take weighs 50 owners. Besides runs/s and the
// p50/p99 dispatch of BenchmarkQueue (runs executed one at a time by the
// 50 owners in turn, every worker waiting), it reports the wait of an
// owner with no backlog under that flood: one more owner executes one run
// at a time through the throughput phase; p50/p99 probe-wait is from its
// execute to a worker holding its lease (fair dispatch: the next free
// slot, whatever the flood queued before).
//
//	go test -run '^$' -bench BenchmarkQueueFair -benchtime 20000x ./scheduler/
func BenchmarkQueueFair(b *testing.B) {
	// rate_limit = 0: client tokens are not rate limited (the admin
	// token of BenchmarkQueue never is).
	conf := []string{`lease_duration = "10m"`, "rate_limit = 0"}
	for k := range 5 {
		conf = append(conf, fmt.Sprintf("[owners.owner-%d]\nshare = 2", k))
	}
	b.Run("sqlite", func(b *testing.B) {
		benchFair(b, []*testsupport.TestServer{testsupport.StartServerOn(b, "", "", conf...)}, nil)
	})
	b.Run("postgres-2", func(b *testing.B) {
		pg := testsupport.StartPostgres(b, "fsync = on", "shared_buffers = 128MB")
		url := pg.NewDatabase()
		var srvs []*testsupport.TestServer
		dataDir := ""
		for range 2 {
			s := testsupport.StartServerOn(b, url, dataDir, conf...)
			dataDir = s.DataDir
			srvs = append(srvs, s)
		}
		benchFair(b, srvs, pg)
	})
}

// fairOwner is one owner of BenchmarkQueueFair: its token and job.
type fairOwner struct{ token, path string }

func benchFair(b *testing.B, srvs []*testsupport.TestServer, pg *testsupport.Postgres) {
	srv := srvs[0]
	var pids []int
	for _, s := range srvs {
		pids = append(pids, s.Pid())
	}
	dbPid := -1
	if pg != nil {
		dbPid = pg.Pid()
	}
	ctx := context.Background()
	admin := benchClient(srv.ClientWith(srv.AdminToken()))
	owners := make([]fairOwner, fairOwners+1) // the last one: the probe owner
	for k := range owners {
		name := "owner-" + strconv.Itoa(k)
		tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: name})
		if err != nil {
			b.Fatal(err)
		}
		job := "bench-" + strconv.Itoa(k)
		j, err := api.ParseJobFile([]byte("name = \"" + job + "\"\nimage = \"bookworm\"\nscript = \"true\"\n"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := benchClient(srv.ClientWith(tok.Token)).AddJob(ctx, j); err != nil {
			b.Fatal(err)
		}
		owners[k] = fairOwner{token: tok.Token, path: "/v1/jobs/" + job + "/runs"}
	}
	probe := owners[fairOwners]
	owners = owners[:fairOwners]

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

	// execute queues one run of o through c and returns its id.
	execute := func(c *rawClient, o fairOwner) string {
		c.token = o.token
		var r struct {
			ID string `json:"id"`
		}
		if _, err := c.post(o.path, []byte("{}"), &r); err != nil {
			b.Fatal(err)
		}
		return r.ID
	}
	// waitLease waits until a worker holds run id and returns how long
	// after t0.
	waitLease := func(id string, t0 time.Time) time.Duration {
		for {
			if v, ok := leasedAt.Load(id); ok {
				return v.(time.Time).Sub(t0)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}

	// Latency: one execute at a time, by the owners in turn, every worker
	// idle and waiting.
	const probes = 300
	pc := &rawClient{addr: srv.Addr}
	defer pc.close()
	var lat []time.Duration
	for i := range probes {
		t0 := time.Now()
		lat = append(lat, waitLease(execute(pc, owners[i%len(owners)]), t0))
	}
	for done.Load() < probes {
		time.Sleep(time.Millisecond)
	}
	sortDurations(lat)

	// The flood: b.N runs of unequal backlogs, in random order.
	weights := make([]float64, len(owners))
	sum := 0.0
	for k := range weights {
		weights[k] = 1 / float64(k+1)
		sum += weights[k]
	}
	order := make([]int, 0, b.N)
	for k := len(owners) - 1; k >= 0; k-- {
		n := int(float64(b.N) * weights[k] / sum)
		if k == 0 {
			n = b.N - len(order)
		}
		for range n {
			order = append(order, k)
		}
	}
	rng := rand.New(rand.NewPCG(29, 29))
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })

	base := done.Load()
	b.ResetTimer()
	srvCPU0, dbCPU0 := testsupport.CPUTime(pids...), testsupport.CPUTime(dbPid)
	start := time.Now()
	var next atomic.Int64
	var ewg sync.WaitGroup
	for i := range 16 {
		c := &rawClient{addr: srvs[i%len(srvs)].Addr}
		defer c.close()
		ewg.Add(1)
		go func() {
			defer ewg.Done()
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				execute(c, owners[order[n-1]])
			}
		}()
	}
	// The probe owner: one run at a time while the flood lasts.
	var wait []time.Duration
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		c := &rawClient{addr: srvs[len(srvs)-1].Addr}
		defer c.close()
		for done.Load()-base < int64(b.N)*9/10 && !b.Failed() {
			t0 := time.Now()
			wait = append(wait, waitLease(execute(c, probe), t0))
		}
	}()
	ewg.Wait()
	<-probeDone
	for done.Load()-base < int64(b.N)+int64(len(wait)) && !b.Failed() {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	srvCPU, dbCPU := testsupport.CPUTime(pids...)-srvCPU0, testsupport.CPUTime(dbPid)-dbCPU0
	b.StopTimer()
	sortDurations(wait)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "runs/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-dispatch-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-dispatch-ms")
	if len(wait) > 0 {
		b.ReportMetric(ms(wait[len(wait)/2]), "p50-probe-wait-ms")
		b.ReportMetric(ms(wait[len(wait)*99/100]), "p99-probe-wait-ms")
		b.ReportMetric(float64(len(wait)), "probe-runs")
	}
	b.ReportMetric(float64(srvCPU.Microseconds())/1000/float64(b.N), "server-cpu-ms/run")
	b.ReportMetric(float64(dbCPU.Microseconds())/1000/float64(b.N), "db-cpu-ms/run")
	b.ReportMetric(0, "ns/op")
}

func sortDurations(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }

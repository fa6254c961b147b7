//go:build linux

package worker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
)

// cluster is a real server and real worker processes on 127.0.0.1, all
// sharing one containerd (each host has its own data dir and storage).
type cluster struct {
	srv  *testsupport.TestServer
	ctrd string
	kiln string
	c    *api.Client
}

func newCluster(t *testing.T, serverConfig ...string) *cluster {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	return &cluster{
		srv:  testsupport.StartServer(t, serverConfig...),
		ctrd: testsupport.StartContainerd(t),
		kiln: kiln,
	}
}

func (cl *cluster) client() *api.Client {
	if cl.c == nil {
		cl.c = cl.srv.Client()
	}
	return cl.c
}

type node struct {
	host *testsupport.Host
	proc *testsupport.Process
	name string
}

// addWorker makes a host with the given images, enrolls it through url
// (the server's or a proxy's) and starts its daemon.
func (cl *cluster) addWorker(t *testing.T, name, labels, url string, images ...string) *node {
	return cl.addWorkerWith(t, name, labels, url, "", images...)
}

// addWorkerWith is addWorker with more host config (TOML tables after
// [server]).
func (cl *cluster) addWorkerWith(t *testing.T, name, labels, url, extra string, images ...string) *node {
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 1\n"+extra)
	for _, im := range images {
		h.MustKiln(t, "image", "create", "-n", im, "-m", "busybox", "-q")
	}
	if url == "" {
		url = cl.srv.URL
	}
	testsupport.EnrollWorker(t, cl.srv, h, url, name, labels)
	return &node{host: h, proc: testsupport.StartWorker(t, h), name: name}
}

func (cl *cluster) addJob(t *testing.T, body string) string {
	t.Helper()
	j, err := api.ParseJobFile([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.client().AddJob(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	return j.Name
}

func (cl *cluster) execute(t *testing.T, job string) string {
	t.Helper()
	r, err := cl.client().ExecuteJobWith(context.Background(), job, api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

// wait polls the run until cond holds or the deadline passes.
func (cl *cluster) wait(t *testing.T, id string, d time.Duration, cond func(*api.Run) bool) *api.Run {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r, err := cl.client().GetRun(context.Background(), id)
		if err == nil && cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: condition not met in %s; last %+v, err %v\nserver log:\n%s", id, d, r, err, tail(cl.srv.Log()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func finished(r *api.Run) bool { return api.Terminal(r.State) }

func (cl *cluster) console(t *testing.T, id string) string {
	t.Helper()
	var b strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.client().FollowLog(ctx, id, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// assertNoLeftovers: no kiln container on the shared containerd, no clone
// in the host's storage but the warm pool's (which a live worker owns).
func (cl *cluster) assertNoLeftovers(t *testing.T, nodes ...*node) {
	cl.assertClean(t, true, nodes...)
}

// assertClean is assertNoLeftovers; with allowWarm false even warm clones
// and warm tasks count (for a host whose worker has stopped).
func (cl *cluster) assertClean(t *testing.T, allowWarm bool, nodes ...*node) {
	t.Helper()
	ctr := testsupport.ContainerdClient(t, cl.ctrd)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var cs []string
		var clones []string
		for _, n := range nodes {
			for _, c := range testsupport.Containers(t, ctr, n.host.Namespace) {
				// A warm task's container is named by its warm clone.
				if !allowWarm || !strings.Contains(c.ID(), "-warm-") {
					cs = append(cs, c.ID())
				}
			}
			ov, err := treestore.NewOverlay(filepath.Join(n.host.Dir, "storage"))
			if err != nil {
				t.Fatal(err)
			}
			list, _ := ov.List(context.Background())
			for _, c := range list {
				if !allowWarm || !strings.Contains(c.RunID, "-warm-") {
					clones = append(clones, c.RunID)
				}
			}
		}
		if len(cs) == 0 && len(clones) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: containers %v, clones %v", cs, clones)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

func TestConstraintsAndImages(t *testing.T) {
	cl := newCluster(t)
	ssd := cl.addWorker(t, "ssd-host", "disk=ssd", "", "busybox", "special")
	hdd := cl.addWorker(t, "hdd-host", "disk=hdd", "", "busybox")
	_ = hdd

	ssdJob := cl.addJob(t, `name = "on-ssd"
image = "busybox"
script = "echo running on $(hostname); echo art > /out/a.txt"
[constraints]
labels = { disk = "ssd" }
`)
	specialJob := cl.addJob(t, `name = "needs-special"
image = "special"
script = "echo special"
`)
	anyJob := cl.addJob(t, `name = "anywhere"
image = "busybox"
script = "echo anywhere"
`)
	var runs []string
	for i := 0; i < 3; i++ {
		runs = append(runs, cl.execute(t, ssdJob), cl.execute(t, specialJob), cl.execute(t, anyJob))
	}
	for i, id := range runs {
		r := cl.wait(t, id, 2*time.Minute, finished)
		if r.State != api.StateSucceeded {
			t.Fatalf("run %s (%s): %s %s\nconsole:\n%s", id, r.Job, r.State, r.Error, cl.console(t, id))
		}
		if i%3 != 2 && r.Host != ssd.name {
			t.Errorf("run %s of %s landed on %s; only %s fits", id, r.Job, r.Host, ssd.name)
		}
	}
	r, _ := cl.client().GetRun(context.Background(), runs[0])
	if len(r.Artifacts) != 1 || r.Artifacts[0].Path != "a.txt" {
		t.Fatalf("artifacts: %+v", r.Artifacts)
	}
	var b strings.Builder
	if err := cl.client().DownloadBlob(context.Background(), r.Artifacts[0].SHA256, &b); err != nil || b.String() != "art\n" {
		t.Fatalf("artifact content %q, %v", b.String(), err)
	}
	if c := cl.console(t, runs[0]); !strings.Contains(c, "running on "+runs[0]) {
		t.Fatalf("console: %q", c)
	}
	cl.assertNoLeftovers(t, ssd, hdd)
	// A worker that stops (SIGTERM) takes its warm clones with it.
	ssd.proc.Term()
	hdd.proc.Term()
	cl.assertClean(t, false, ssd, hdd)
}

// A worker killed with SIGKILL mid-run and restarted reattaches to the
// sandbox that outlived it: the same attempt completes with its whole
// console, and nothing is left afterwards.
func TestWorkerKilledMidRun(t *testing.T) {
	cl := newCluster(t, `lease_duration = "5s"`, `lease_check = "300ms"`)
	n := cl.addWorker(t, "w1", "", "", "busybox")
	job := cl.addJob(t, `name = "slow"
image = "busybox"
script = "echo begin attempt $KILN_ATTEMPT; for i in $(seq 1 60); do echo line $i; sleep 0.05; done; echo done > /out/done.txt"
`)
	id := cl.execute(t, job)
	cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	n.proc.Kill()
	time.Sleep(500 * time.Millisecond) // the job goes on writing with nobody attached
	n.proc.Start()
	r := cl.wait(t, id, 2*time.Minute, finished)
	if r.State != api.StateSucceeded || len(r.Artifacts) != 1 {
		t.Fatalf("after kill -9 and restart: %+v\nworker log:\n%s", r, tail(n.proc.Log()))
	}
	if r.Attempt != 1 {
		t.Fatalf("attempt %d: the restarted worker did not reattach\n%s", r.Attempt, tail(n.proc.Log()))
	}
	console := cl.console(t, id)
	if !strings.Contains(console, "reattached") {
		t.Errorf("console does not say the run was reattached:\n%s", console)
	}
	checkLines(t, console)
	cl.assertNoLeftovers(t, n)
}

func TestPartition(t *testing.T) {
	cl := newCluster(t, `lease_duration = "4s"`, `lease_check = "300ms"`)
	proxy := testsupport.StartProxy(t, cl.srv.Addr)
	n := cl.addWorker(t, "w1", "", "http://"+proxy.Addr, "busybox")
	job := cl.addJob(t, `name = "lines"
image = "busybox"
script = "for i in $(seq 1 60); do echo line $i; sleep 0.05; done; echo ok > /out/ok.txt"
`)

	t.Run("shorter than the lease", func(t *testing.T) {
		id := cl.execute(t, job)
		cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
		proxy.Cut()
		time.Sleep(2 * time.Second)
		proxy.Restore()
		r := cl.wait(t, id, 2*time.Minute, finished)
		if r.State != api.StateSucceeded || r.Attempt != 1 {
			t.Fatalf("run: %+v", r)
		}
		checkLines(t, cl.console(t, id))
	})

	t.Run("longer than the lease", func(t *testing.T) {
		slow := cl.addJob(t, `name = "slow-lines"
image = "busybox"
script = "echo attempt $KILN_ATTEMPT; sleep 3; echo finished attempt $KILN_ATTEMPT"
`)
		id := cl.execute(t, slow)
		cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
		proxy.Cut()
		cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.Attempt >= 2 || api.Terminal(r.State) })
		time.Sleep(4 * time.Second) // the first attempt ends while cut off
		proxy.Restore()
		r := cl.wait(t, id, 2*time.Minute, finished)
		if r.State != api.StateSucceeded || r.Attempt < 2 {
			t.Fatalf("run: %+v", r)
		}
		if !strings.Contains(n.proc.Log(), "dropped") {
			t.Errorf("worker log does not show the stale attempt being dropped:\n%s", tail(n.proc.Log()))
		}
		cl.assertNoLeftovers(t, n)
	})
}

func checkLines(t *testing.T, console string) {
	t.Helper()
	var got []int
	for _, l := range strings.Split(console, "\n") {
		if v, ok := strings.CutPrefix(l, "line "); ok {
			n, err := strconv.Atoi(v)
			if err == nil {
				got = append(got, n)
			}
		}
	}
	if len(got) != 60 {
		t.Fatalf("console has %d job lines, want 60 (lost or duplicated):\n%s", len(got), console)
	}
	for i, v := range got {
		if v != i+1 {
			t.Fatalf("line %d is %d: out of order or duplicated", i+1, v)
		}
	}
}

func TestLargeArtifactBoundedMemory(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorker(t, "w1", "", "", "busybox")
	job := cl.addJob(t, `name = "big"
image = "busybox"
script = "dd if=/dev/urandom of=/out/big.bin bs=1M count=1024 2>/dev/null; sha256sum /out/big.bin"
timeout = "10m"
`)
	id := cl.execute(t, job)
	r := cl.wait(t, id, 10*time.Minute, finished)
	if r.State != api.StateSucceeded || len(r.Artifacts) != 1 || r.Artifacts[0].Size != 1<<30 {
		t.Fatalf("run: %+v", r)
	}
	if c := cl.console(t, id); !strings.Contains(c, r.Artifacts[0].SHA256) {
		t.Fatalf("uploaded sha256 %s differs from the job's own sum:\n%s", r.Artifacts[0].SHA256, c)
	}
	hwm := peakRSS(t, n.proc.Pid())
	t.Logf("worker peak RSS while handling a 1 GiB artifact: %d MiB", hwm>>20)
	if hwm > 256<<20 {
		t.Fatalf("worker peak RSS %d MiB: memory is not flat for a 1 GiB artifact", hwm>>20)
	}
}

func peakRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// When the sandbox did not survive the worker (the host rebooted, say),
// the restarted worker cannot reattach; the run is not failed but requeued
// as a new attempt once its lease expires, and nothing is left behind.
func TestWorkerRestartAfterSandboxLost(t *testing.T) {
	cl := newCluster(t, `lease_duration = "3s"`, `lease_check = "300ms"`)
	n := cl.addWorker(t, "w1", "", "", "busybox")
	job := cl.addJob(t, `name = "slow"
image = "busybox"
script = "echo attempt $KILN_ATTEMPT; sleep 3; echo done > /out/done.txt"
`)
	id := cl.execute(t, job)
	cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	n.proc.Kill()
	ctr := testsupport.ContainerdClient(t, cl.ctrd)
	ctx := namespaces.WithNamespace(context.Background(), n.host.Namespace)
	cs := testsupport.Containers(t, ctr, n.host.Namespace)
	if len(cs) != 1 {
		t.Fatalf("containers: %v", cs)
	}
	if err := testsupport.DeleteTask(ctx, cs[0]); err != nil {
		t.Fatal(err)
	}
	n.proc.Start()
	r := cl.wait(t, id, 2*time.Minute, finished)
	if r.State != api.StateSucceeded || r.Attempt < 2 {
		t.Fatalf("run: %+v\n%s", r, tail(n.proc.Log()))
	}
	cl.assertNoLeftovers(t, n)
}

// A worker offers bridge networking (the CNI plugins are there) and not
// host networking (its worker.toml does not allow it): a bridge job runs
// in its own network, a host job is never leased to it, and a stopped
// worker leaves no network behind (its pool included).
func TestNetworkModes(t *testing.T) {
	testsupport.NeedCNI(t)
	cl := newCluster(t)
	w := cl.addWorker(t, "net-host", "", "", "busybox")
	bridgeJob := cl.addJob(t, `name = "bridged"
image = "busybox"
script = "ls /sys/class/net | tr '\n' ' '; echo; ip -4 route"
[resources]
network = "bridge"
`)
	hostJob := cl.addJob(t, `name = "host-net"
image = "busybox"
script = "true"
[resources]
network = "host"
`)
	hostRun := cl.execute(t, hostJob)
	bridgeRun := cl.execute(t, bridgeJob)
	r := cl.wait(t, bridgeRun, 2*time.Minute, finished)
	console := cl.console(t, bridgeRun)
	if r.State != api.StateSucceeded || !strings.Contains(console, "eth0 lo \n") || !strings.Contains(console, "default via ") {
		t.Fatalf("bridge run: %s %s\nconsole:\n%s", r.State, r.Error, console)
	}
	// The host run was queued first and the worker has leased since.
	if hr, err := cl.client().GetRun(context.Background(), hostRun); err != nil || hr.State != api.StateQueued || hr.Host != "" {
		t.Fatalf("host-network run on a host that refuses it: %+v %v", hr, err)
	}
	// After a bridge run the worker keeps one network per slot made ahead.
	deadline := time.Now().Add(time.Minute)
	for {
		ready, _ := filepath.Glob(filepath.Join(w.host.Dir, "network", "pool", "*", "attachment.json"))
		if len(ready) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pooled network after a bridge run: %v\n%s", ready, w.proc.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.proc.Term()
	cl.assertClean(t, false, w)
	for _, sub := range []string{"runs", "pool"} {
		if left, _ := os.ReadDir(filepath.Join(w.host.Dir, "network", sub)); len(left) != 0 {
			t.Errorf("network/%s left after the worker stopped: %v", sub, left)
		}
	}
}

//go:build linux

package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux"
)

// waitLocked waits until the worker of h holds its data dir's lock (it
// records its pid there once it does).
func waitLocked(t *testing.T, h *testsupport.Host, p *testsupport.Process) {
	t.Helper()
	want := strconv.Itoa(p.Pid())
	for deadline := time.Now().Add(time.Minute); ; {
		b, _ := os.ReadFile(filepath.Join(h.Dir, "lock"))
		if strings.TrimSpace(string(b)) == want {
			return
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("worker never took its data dir's lock:\n%s", p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A data dir belongs to one worker: a second `kiln worker run`, or a
// `kiln exec` that would reap it, is refused naming the holder's pid;
// image commands still work beside the worker.
func TestHeldDataDirRefused(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorker(t, "w1", "", "", "busybox")
	waitLocked(t, n.host, n.proc)
	pid := strconv.Itoa(n.proc.Pid())

	_, stderr, code := n.host.Kiln(t, "worker", "run")
	if code == 0 || !strings.Contains(stderr, "in use by pid "+pid) {
		t.Fatalf("second worker: exit %d, stderr %q; want refused naming pid %s", code, stderr, pid)
	}
	job := testsupport.WriteFile(t, "job.toml", "name = \"j\"\nimage = \"busybox\"\nscript = \"echo hi\"\n")
	_, stderr, code = n.host.Kiln(t, "exec", job)
	if code == 0 || !strings.Contains(stderr, "in use by pid "+pid) {
		t.Fatalf("exec beside the worker: exit %d, stderr %q; want refused naming pid %s", code, stderr, pid)
	}
	if out := n.host.MustKiln(t, "image", "list"); !strings.Contains(out, "busybox") {
		t.Fatalf("image list beside the worker: %q", out)
	}
	if n.proc.Exited() {
		t.Fatalf("the first worker died:\n%s", n.proc.Log())
	}
	// Once the worker is gone, exec may use the data dir.
	n.proc.Term()
	if out, stderr, code := n.host.Kiln(t, "exec", job); code != 0 || !strings.Contains(out, "hi") {
		t.Fatalf("exec after the worker stopped: exit %d\n%s%s", code, out, stderr)
	}
}

// Issue 11.2: a worker under server A is SIGKILLed mid-run; the host is
// enrolled with a fresh server B on the same data dir and restarted. B's
// run 1 must be a run of its own, never A's sandbox "reattached", and A's
// leftovers are reaped.
func TestHostMovedToAnotherServer(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorker(t, "w1", "", "", "busybox")
	job := cl.addJob(t, "name = \"slow\"\nimage = \"busybox\"\nscript = \"echo server-a; sleep 600\"\n")
	idA := cl.execute(t, job)
	cl.wait(t, idA, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	n.proc.Kill()

	srvB := testsupport.StartServer(t)
	clB := &cluster{srv: srvB, ctrd: cl.ctrd, kiln: cl.kiln}
	jobB := clB.addJob(t, "name = \"quick\"\nimage = \"busybox\"\nscript = \"echo server-b; echo $KILN_RUN > /out/id.txt\"\n")
	idB := clB.execute(t, jobB)
	if idB != idA {
		t.Fatalf("B's first run is %s, A's %s: the test needs the same run ID", idB, idA)
	}
	testsupport.EnrollWorker(t, srvB, n.host, srvB.URL, "w1", "")
	n.proc.Start()

	r := clB.wait(t, idB, 2*time.Minute, finished)
	console := clB.console(t, idB)
	if r.State != api.StateSucceeded || r.Attempt != 1 {
		t.Fatalf("B's run %s: %s attempt %d %s\nconsole:\n%s\nworker:\n%s", idB, r.State, r.Attempt, r.Error, console, tail(n.proc.Log()))
	}
	if strings.Contains(console, "reattached") || strings.Contains(console, "server-a") || !strings.Contains(console, "server-b") {
		t.Fatalf("B's run mixed with A's:\n%s", console)
	}
	var b bytes.Buffer
	if len(r.Artifacts) != 1 || clB.client().DownloadBlob(context.Background(), r.Artifacts[0].SHA256, &b) != nil || b.String() != idB+"\n" {
		t.Fatalf("B's artifacts %+v %q", r.Artifacts, b.String())
	}
	if !strings.Contains(n.proc.Log(), "dropping lease records of another server") {
		t.Errorf("the worker did not report A's lease records:\n%s", tail(n.proc.Log()))
	}
	// A's sandbox was reaped at start: nothing is left.
	cl.assertNoLeftovers(t, n)
}

// Issue 19: one server and two workers on one host in the default
// containerd namespace, each with its own data dir and 2 slots. Runs are
// queued while, every few seconds, one worker is SIGKILLed and restarted,
// and the server is SIGKILLed and restarted once. Every run must end
// succeeded, with its own artifact. 60 runs with KILN_LONG_TESTS=1,
// fewer otherwise.
func TestTwoWorkersOneNamespaceUnderFaults(t *testing.T) {
	runs, every := 16, 3*time.Second
	if os.Getenv("KILN_LONG_TESTS") == "1" {
		runs, every = 60, 4*time.Second
	}
	cl := newCluster(t, `lease_duration = "4s"`, `lease_check = "300ms"`, `max_attempts = 50`)
	var nodes []*node
	for i := range 2 {
		h := testsupport.NewHostInNamespace(t, cl.kiln, cl.ctrd, "kiln", "[server]\nheartbeat = \"300ms\"\nslots = 2\n")
		h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
		name := fmt.Sprintf("w%d", i)
		testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, name, "")
		nodes = append(nodes, &node{host: h, proc: testsupport.StartWorker(t, h), name: name})
	}
	job := cl.addJob(t, "name = \"id\"\nimage = \"busybox\"\nscript = \"sleep 2; echo $KILN_RUN > /out/id.txt\"\n")
	var ids []string
	for range runs {
		ids = append(ids, cl.execute(t, job))
	}

	stop := make(chan struct{})
	var chaos sync.WaitGroup
	chaos.Add(1)
	kills := 0
	go func() {
		defer chaos.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if i == 3 {
				cl.srv.Restart() // SIGKILL, then start again
				continue
			}
			n := nodes[i%2]
			n.proc.Kill()
			n.proc.Start()
			kills++
		}
	}()
	c := cl.client()
	for _, id := range ids {
		var r *api.Run
		for deadline := time.Now().Add(10 * time.Minute); ; {
			var err error
			if r, err = c.GetRun(context.Background(), id); err == nil && api.Terminal(r.State) {
				break
			}
			if time.Now().After(deadline) {
				close(stop)
				t.Fatalf("run %s not finished in time: %+v", id, r)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if r.State != api.StateSucceeded {
			close(stop)
			chaos.Wait()
			t.Fatalf("run %s: %s after %d attempts: %s\nconsole:\n%s\nworker 0:\n%s\nworker 1:\n%s", id, r.State, r.Attempt, r.Error,
				cl.console(t, id), tail(nodes[0].proc.Log()), tail(nodes[1].proc.Log()))
		}
	}
	close(stop)
	chaos.Wait()
	t.Logf("%d runs succeeded through %d worker kills and one server kill", runs, kills)
	for _, id := range ids {
		r, err := c.GetRun(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if len(r.Artifacts) != 1 || r.Artifacts[0].Path != "id.txt" {
			t.Fatalf("run %s artifacts: %+v", id, r.Artifacts)
		}
		if err := c.DownloadBlob(context.Background(), r.Artifacts[0].SHA256, &b); err != nil || b.String() != id+"\n" {
			t.Fatalf("run %s artifact id.txt = %q, %v", id, b.String(), err)
		}
	}
	all, err := c.ListRuns(context.Background(), job, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != runs {
		t.Fatalf("the job has %d runs, want %d", len(all), runs)
	}
	cl.assertNoLeftovers(t, nodes...)
}

// Leftovers of a data dir that is gone for good are left alone by the
// other workers of the host and removed by `kiln host gc` only.
func TestHostGCRemovesLeftoversOfGoneDataDirs(t *testing.T) {
	cl := newCluster(t)
	var nodes []*node
	for i := range 2 {
		h := testsupport.NewHostInNamespace(t, cl.kiln, cl.ctrd, "kiln", "[server]\nheartbeat = \"300ms\"\nslots = 1\n")
		h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
		name := fmt.Sprintf("w%d", i)
		testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, name, "")
		nodes = append(nodes, &node{host: h, proc: testsupport.StartWorker(t, h), name: name})
	}
	job := cl.addJob(t, "name = \"long\"\nimage = \"busybox\"\nscript = \"echo up; sleep 600\"\n")
	a, b := cl.execute(t, job), cl.execute(t, job)
	cl.wait(t, a, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	cl.wait(t, b, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	gone, kept := nodes[0], nodes[1]
	if r, _ := cl.client().GetRun(context.Background(), a); r.Host != gone.name {
		gone, kept = kept, gone
	}
	gone.proc.Kill()
	goneID, err := os.ReadFile(filepath.Join(gone.host.Dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	short := strings.TrimSpace(string(goneID))[:8]
	gone.host.Destroy(t)

	out := kept.host.MustKiln(t, "host", "gc", "--dry-run")
	if !strings.Contains(out, "would remove\tkiln-"+short+"-") || !strings.Contains(out, "shim anchor") {
		t.Fatalf("gc --dry-run listed:\n%s", out)
	}
	ctr := testsupport.ContainerdClient(t, cl.ctrd)
	count := func(prefix string) int {
		n := 0
		for _, c := range testsupport.Containers(t, ctr, "kiln") {
			if strings.HasPrefix(c.ID(), prefix) {
				n++
			}
		}
		return n
	}
	if count("kiln-"+short+"-") != 1 {
		t.Fatalf("the gone data dir's sandbox is not there after a dry run")
	}
	keptID, err := os.ReadFile(filepath.Join(kept.host.Dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	keptShort := strings.TrimSpace(string(keptID))[:8]
	if n := rangeRecords(t, "kiln-"+short+"-"); n != 1 {
		t.Fatalf("%d user namespace range records of the gone data dir's sandbox before gc, want 1", n)
	}
	out = kept.host.MustKiln(t, "host", "gc")
	if !strings.Contains(out, "removed\tkiln-"+short+"-") {
		t.Fatalf("gc listed:\n%s", out)
	}
	if n := count("kiln-" + short + "-"); n != 0 {
		t.Fatalf("%d sandboxes of the gone data dir left after gc", n)
	}
	if n := rangeRecords(t, "kiln-"+short+"-"); n != 0 {
		t.Fatalf("%d user namespace range records of the gone data dir's sandbox left after gc", n)
	}
	if n := rangeRecords(t, "kiln-"+keptShort+"-"); n != 1 {
		t.Fatalf("%d user namespace range records of the live worker's sandbox after gc, want 1", n)
	}
	// The live worker's run went on untouched.
	if r, err := cl.client().GetRun(context.Background(), b); err != nil || api.Terminal(r.State) {
		t.Fatalf("the live worker's run: %+v %v", r, err)
	}
	if kept.proc.Exited() {
		t.Fatalf("the live worker died:\n%s", kept.proc.Log())
	}
	if _, err := cl.client().CancelRun(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// rangeRecords counts the host's user namespace range records
// (linux.UsernsDir, shared by every kiln process) that name a container
// whose ID starts with prefix.
func rangeRecords(t *testing.T, prefix string) int {
	t.Helper()
	ents, err := os.ReadDir(linux.UsernsDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(linux.UsernsDir, e.Name()))
		if err != nil {
			continue // freed meanwhile
		}
		if _, ctr, _ := strings.Cut(strings.TrimSpace(string(b)), "\n"); strings.HasPrefix(ctr, prefix) {
			n++
		}
	}
	return n
}

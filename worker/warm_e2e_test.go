//go:build linux

package worker_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// warmTasks lists the containers of n's idle or adopted warm tasks.
func (cl *cluster) warmTasks(t *testing.T, n *node) []string {
	t.Helper()
	var ids []string
	for _, c := range testsupport.Containers(t, testsupport.ContainerdClient(t, cl.ctrd), n.host.Namespace) {
		if strings.Contains(c.ID(), "-warm-") {
			ids = append(ids, c.ID())
		}
	}
	slices.Sort(ids)
	return ids
}

// waitWarmReady waits until n's worker has logged that warm task id is
// in its pool.
func waitWarmReady(t *testing.T, n *node, id string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(n.proc.Log(), `msg="warm task ready" sandbox=`+strings.TrimPrefix(id, "kiln-")); {
		if time.Now().After(deadline) {
			t.Fatalf("warm task %s never ready:\n%s", id, tail(n.proc.Log()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitWarmTasks waits until n's warm tasks are want long and hold none of
// gone, and returns them.
func (cl *cluster) waitWarmTasks(t *testing.T, n *node, want int, gone ...string) []string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ids := cl.warmTasks(t, n)
		if len(ids) == want && !slices.ContainsFunc(ids, func(id string) bool { return slices.Contains(gone, id) }) {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("warm tasks %v, want %d, none of %v\nworker:\n%s", ids, want, gone, tail(n.proc.Log()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Issue 18: after a run of an image the worker keeps one warm task per
// slot; the next run of the image starts on one with its own script, env,
// limits, hostname, exit code and artifacts; the pool is refilled; a
// SIGKILLed worker's idle warm tasks are reaped when it starts again.
func TestWarmTasks(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorkerWith(t, "w1", "", "", "[limits]\nmemory = \"512MiB\"\npids = 300\n", "busybox")
	first := cl.addJob(t, "name = \"first\"\nimage = \"busybox\"\nscript = \"test ! -e /.kiln\"\n")
	if r := cl.wait(t, cl.execute(t, first), 2*time.Minute, finished); r.State != api.StateSucceeded {
		t.Fatalf("first run (cold): %s %s", r.State, r.Error)
	}
	idle := cl.waitWarmTasks(t, n, 1)
	waitWarmReady(t, n, idle[0])

	job := cl.addJob(t, `name = "warm"
image = "busybox"
script = '''
test -e /.kiln/entry && echo on=warm-task
echo "foo=$FOO"
echo "host=$(hostname) run=$KILN_RUN cwd=$(pwd) uid=$(id -u)"
echo art >/out/a.txt
(for i in $(seq 150); do sleep 60 & done) 2>/dev/null
# At the limit no fork is left: builtins only from here.
set -- /proc/[0-9]*
[ $# -gt 50 ] && [ $# -le 100 ] && echo pids=limited || echo "pids=$#"
exit 3
'''
[env]
FOO = "it's a \"quoted\" $value"
[resources]
memory = "256MiB"
pids = 100
`)
	id := cl.execute(t, job)
	r := cl.wait(t, id, 2*time.Minute, finished)
	console := cl.console(t, id)
	if r.State != api.StateFailed || r.ExitCode == nil || *r.ExitCode != 3 {
		t.Fatalf("warm run: %s exit %v %s, want failed with 3\nconsole:\n%s", r.State, r.ExitCode, r.Error, console)
	}
	for _, want := range []string{
		"on=warm-task\n",
		"foo=it's a \"quoted\" $value\n",
		"host=" + id + " run=" + id + " cwd=/work uid=0\n",
		"pids=limited\n",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
	if len(r.Artifacts) != 1 || r.Artifacts[0].Path != "a.txt" {
		t.Errorf("artifacts %+v, want a.txt", r.Artifacts)
	}
	// The run took the idle task (torn down with it); the pool is
	// refilled with another.
	refilled := cl.waitWarmTasks(t, n, 1, idle...)
	waitWarmReady(t, n, refilled[0])

	// A run on a warm task outlives a SIGKILLed worker: the restarted
	// worker reattaches to it and reaps the idle task.
	slow := cl.addJob(t, "name = \"slow\"\nimage = \"busybox\"\nscript = \"test -e /.kiln/entry && echo on=warm-task; echo started; sleep 600\"\n")
	sid := cl.execute(t, slow)
	cl.waitConsole(t, sid, "started\n")
	adopted := refilled
	idle = cl.waitWarmTasks(t, n, 2)
	n.proc.Kill()
	if got := cl.warmTasks(t, n); !slices.Equal(got, idle) {
		t.Fatalf("after SIGKILL: warm tasks %v, want %v still there", got, idle)
	}
	n.proc.Start()
	cl.waitConsole(t, sid, "reattached")
	// The restarted worker reaps the dead one's idle task at start-up,
	// and keeps the one its reattached run is on.
	cl.waitWarmTasks(t, n, 1, slices.DeleteFunc(slices.Clone(idle), func(id string) bool { return slices.Contains(adopted, id) })...)
	if _, err := cl.client().CancelRun(context.Background(), sid); err != nil {
		t.Fatal(err)
	}
	if r := cl.wait(t, sid, time.Minute, finished); r.State != api.StateCancelled || !strings.Contains(cl.console(t, sid), "on=warm-task") {
		t.Fatalf("slow run: %s %s, want cancelled, on a warm task\n%s", r.State, r.Error, cl.console(t, sid))
	}
	cl.waitWarmTasks(t, n, 0)
	cl.assertClean(t, false, n)
	// Nor their gates (the reattached run's went with it).
	for _, id := range append(idle, adopted...) {
		if gates, _ := filepath.Glob("/run/kiln/gate/*-" + id); len(gates) > 0 {
			t.Errorf("gates left: %v", gates)
		}
	}
}

// waitConsole waits until run id's console holds want.
func (cl *cluster) waitConsole(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := cl.client().ReadLog(context.Background(), id, 0, 0, 0)
		if err == nil && strings.Contains(string(c.Data), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: console never held %q (err %v)", id, want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

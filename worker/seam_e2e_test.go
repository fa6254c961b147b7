//go:build linux

package worker_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// A worker reaches a server whose certificate a private CA signed through
// worker.toml's tls_ca, which `kiln worker enroll --tls-ca` writes.
func TestWorkerOverTLSWithPrivateCA(t *testing.T) {
	testsupport.NeedRoot(t)
	cl := &cluster{srv: testsupport.StartTLSServer(t), ctrd: testsupport.StartContainerd(t), kiln: testsupport.BuildKiln(t)}
	n := cl.addWorker(t, "tls", "", "", "busybox")
	if cfg, err := os.ReadFile(n.host.ConfigPath); err != nil || !strings.Contains(string(cfg), "tls_ca = \""+cl.srv.CAFile+"\"") {
		t.Fatalf("enroll did not keep the CA in the host config (%v):\n%s", err, cfg)
	}
	job := cl.addJob(t, "name = \"tls\"\nimage = \"busybox\"\nscript = \"echo over tls\"\n")
	r := cl.wait(t, cl.execute(t, job), time.Minute, finished)
	if r.State != api.StateSucceeded {
		t.Fatalf("run %+v\n%s", r, tail(n.proc.Log()))
	}
	if strings.Contains(n.proc.Log(), "plain HTTP") {
		t.Fatalf("the worker warned of plain HTTP on https:\n%s", n.proc.Log())
	}
}

// Removing a host (its credential answers 401 from then on) stops its
// worker at once: the running job is dropped, not reported, its sandbox
// destroyed, and the worker exits 77 saying why instead of retrying.
func TestWorkerStopsWhenHostRemoved(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorker(t, "doomed", "", "", "busybox")
	job := cl.addJob(t, "name = \"long\"\nimage = \"busybox\"\nscript = \"echo started; sleep 300\"\n")
	id := cl.execute(t, job)
	cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	if err := cl.client().RemoveHost(context.Background(), "doomed"); err != nil {
		t.Fatal(err)
	}
	if code := n.proc.Wait(); code != 77 {
		t.Fatalf("worker exited %d, want 77:\n%s", code, tail(n.proc.Log()))
	}
	log := n.proc.Log()
	for _, want := range []string{"refused this host's credential", "no longer shipped", "re-enroll"} {
		if !strings.Contains(log, want) {
			t.Fatalf("worker log lacks %q:\n%s", want, tail(log))
		}
	}
	if strings.Contains(log, "reported") {
		t.Fatalf("the worker reported a run of a removed host:\n%s", tail(log))
	}
	cl.assertClean(t, false, n)
}

// A result too large for the server's max_body (too many artifact entries)
// ends the run failed, the reason in its error and console, instead of
// being retried while heartbeats keep the lease.
func TestResultTooLargeFailsTheRun(t *testing.T) {
	cl := newCluster(t, `max_body = "32KiB"`)
	n := cl.addWorker(t, "big", "", "", "busybox")
	job := cl.addJob(t, "name = \"many\"\nimage = \"busybox\"\nartifacts = [\"*\"]\n"+
		"script = \"for i in $(seq 600); do echo x > /out/an-artifact-with-a-rather-long-name-$i.txt; done\"\n")
	id := cl.execute(t, job)
	r := cl.wait(t, id, 2*time.Minute, finished)
	if r.State != api.StateFailed || !strings.Contains(r.Error, "too large (600 artifacts") || len(r.Artifacts) != 0 {
		t.Fatalf("run %s %q with %d artifacts, want failed for a too large result\n%s", r.State, r.Error, len(r.Artifacts), tail(n.proc.Log()))
	}
	if c := cl.console(t, id); !strings.Contains(c, "[kiln] the server refused the result as too large") {
		t.Fatalf("console lacks the reason:\n%s", c)
	}
}

//go:build linux

package worker_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// A real `kiln worker run` with [metrics] listen serves its metrics; after
// a run in containerd they show the run, each phase the sandbox runner
// went through and the lease wait.
func TestWorkerMetricsEndpoint(t *testing.T) {
	cl := newCluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 1\n[metrics]\nlisten = \""+addr+"\"\n")
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, "metered", "")
	proc := testsupport.StartWorker(t, h)

	job := cl.addJob(t, "name = \"metered\"\nimage = \"busybox\"\nscript = \"echo x > /out/x.txt\"\n")
	id := cl.execute(t, job)
	if r := cl.wait(t, id, 2*time.Minute, finished); r.State != api.StateSucceeded {
		t.Fatalf("run ended %s: %s\n%s", r.State, r.Error, cl.console(t, id))
	}
	// The worker counts the run once the server answered its result, and
	// teardown runs in the background: poll until both are in.
	want := []string{
		`kiln_worker_runs_total{state="succeeded"} 1`,
		`kiln_worker_runs_active 0`,
		`kiln_worker_phase_seconds_count{phase="clone"} 1`,
		`kiln_worker_phase_seconds_count{phase="start"} 1`,
		`kiln_worker_phase_seconds_count{phase="collect"} 1`,
		`kiln_worker_phase_seconds_count{phase="teardown"} 1`,
		`kiln_worker_lease_wait_seconds_count 1`,
	}
	deadline := time.Now().Add(time.Minute)
	for {
		body, err := scrape("http://" + addr + "/metrics")
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				missing = w
				break
			}
		}
		if err == nil && missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape: err %v, missing %q:\n%s\nworker log:\n%s", err, missing, body, tail(proc.Log()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scrape(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

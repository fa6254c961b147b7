//go:build linux

package worker_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestIsolationThroughServer: a worker reports the tiers its host offers,
// and a job with isolation = "gvisor" runs under gVisor through the server;
// a default job on the same host runs in the hardened container tier.
func TestIsolationThroughServer(t *testing.T) {
	testsupport.NeedCommand(t, "runsc")
	cl := newCluster(t)
	n := cl.addWorker(t, "h1", "", "", "busybox")
	gv := cl.addJob(t, `name = "gv"
image = "busybox"
isolation = "gvisor"
script = "dmesg | grep -q gVisor && echo under-gvisor"
`)
	ct := cl.addJob(t, `name = "ct"
image = "busybox"
script = "grep -q 'Seccomp:.*2' /proc/self/status && echo seccomp-on"
`)
	for job, want := range map[string]string{gv: "under-gvisor", ct: "seccomp-on"} {
		id := cl.execute(t, job)
		r := cl.wait(t, id, 2*time.Minute, finished)
		c := cl.console(t, id)
		if r.State != api.StateSucceeded || !strings.Contains(c, want) {
			t.Fatalf("run %s of %s: %s %s, console %q: want %q", id, job, r.State, r.Error, c, want)
		}
	}
	hosts, err := cl.client().ListHosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.Name == n.name && (!slices.Contains(h.Facts.Isolations, api.IsolationContainer) || !slices.Contains(h.Facts.Isolations, api.IsolationGVisor)) {
			t.Fatalf("host %s reports isolations %v", h.Name, h.Facts.Isolations)
		}
	}
	cl.assertNoLeftovers(t, n)
}

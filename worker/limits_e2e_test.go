//go:build linux

package worker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// TestLimitsThroughServer: a real worker reports its [limits] maxima; a job
// over them waits queued and says why, in the API and `kiln run info`; a job
// asking nothing runs under the host's defaults.
func TestLimitsThroughServer(t *testing.T) {
	cl := newCluster(t)
	n := cl.addWorkerWith(t, "small", "", "", "[limits]\nmemory = \"256MiB\"\nmemory_max = \"1GiB\"\npids = 64\n", "busybox")

	big := cl.addJob(t, "name = \"big\"\nimage = \"busybox\"\nscript = \"true\"\n[resources]\nmemory = \"2GiB\"\n")
	id := cl.execute(t, big)
	const want = "no enrolled host allows memory=2GiB (max 1GiB)"
	cl.wait(t, id, 30*time.Second, func(r *api.Run) bool { return r.Waiting == want })
	out, _, code := cl.srv.Run("run", "info", id)
	if code != 0 || !strings.Contains(out, "waiting:") || !strings.Contains(out, want) {
		t.Fatalf("kiln run info (exit %d):\n%s", code, out)
	}

	// The defaults bound a job that asks for nothing: its 64th process
	// cannot be forked.
	plain := cl.addJob(t, `name = "plain"
image = "busybox"
script = """
i=0
while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done
echo forked-all
"""
timeout = "2m"
`)
	pid := cl.execute(t, plain)
	r := cl.wait(t, pid, 3*time.Minute, finished)
	console := cl.console(t, pid)
	if strings.Contains(console, "forked-all") || !strings.Contains(console, "can't fork") {
		t.Fatalf("100 processes under a default pids limit of 64: state %s\n%s", r.State, console)
	}
	if got, _ := cl.client().GetRun(t.Context(), id); got.State != api.StateQueued {
		t.Fatalf("the over-max run left the queue: %s", got.State)
	}
	cl.assertNoLeftovers(t, n)
}

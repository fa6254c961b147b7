//go:build linux

package worker_test

import (
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// SIGTERM drains: running jobs finish within drain_timeout and are reported;
// past it they are cancelled and reported; either way nothing is left.
func TestWorkerDrainOnSIGTERM(t *testing.T) {
	cl := newCluster(t)
	tests := []struct {
		name, drain, script string
		wantState           string
	}{
		{"finishes within the drain timeout", "30s", "sleep 3; echo done > /out/done.txt", api.StateSucceeded},
		{"cancelled past the drain timeout", "1s", "sleep 120", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 1\ndrain_timeout = \""+tt.drain+"\"\n")
			h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
			name := []string{"drain-a", "drain-b"}[i]
			testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, name, "drain="+name)
			n := &node{host: h, proc: testsupport.StartWorker(t, h), name: name}
			job := cl.addJob(t, "name = \""+name+"\"\nimage = \"busybox\"\nscript = \"echo started; "+tt.script+"\"\n[constraints]\nlabels = { drain = \""+name+"\" }\n")
			id := cl.execute(t, job)
			cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
			start := time.Now()
			n.proc.Term()
			took := time.Since(start)
			r := cl.wait(t, id, 30*time.Second, finished)
			if tt.wantState != "" && r.State != tt.wantState {
				t.Fatalf("state %s, want %s: %+v\n%s", r.State, tt.wantState, r, tail(n.proc.Log()))
			}
			if tt.wantState == "" && r.State == api.StateSucceeded {
				t.Fatalf("a job cut off by the drain timeout succeeded: %+v", r)
			}
			if tt.wantState == "" && took > 30*time.Second {
				t.Fatalf("worker took %s to stop with a 1s drain timeout", took)
			}
			cl.assertClean(t, false, n)
		})
	}
}

//go:build linux

package worker_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// addHost is addWorker with more host config.
func (cl *cluster) addHost(t *testing.T, name, extra string) *node {
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 1\n"+extra)
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, name, "")
	return &node{host: h, proc: testsupport.StartWorker(t, h), name: name}
}

// A vm run with bridge networking goes only to the host that offers vm
// (both offer bridge) and runs there in a guest with a NIC; when that
// host's worker is SIGKILLed mid-run, the restarted worker cannot reattach
// to a guest: it reaps it with its network and the run is requeued.
func TestWorkerVM(t *testing.T) {
	testsupport.NeedVM(t)
	testsupport.NeedCNI(t)
	cl := newCluster(t, `lease_duration = "5s"`, `lease_check = "300ms"`)
	plain := cl.addHost(t, "plain", "[vm]\nqemu = \"/nonexistent/qemu-system-x86_64\"\n")
	vmh := cl.addHost(t, "vmhost", "[vm]\naccel = \"tcg\"\n")
	job := cl.addJob(t, `name = "in-vm"
image = "busybox"
isolation = "vm"
script = """
echo "attempt $KILN_ATTEMPT kernel $(uname -r) nic $(ls /sys/class/net | tr '\n' ' ')"
echo art > /out/a.txt
[ "$KILN_ATTEMPT" = 1 ] && sleep 600
exit 0
"""
[resources]
network = "bridge"
`)
	id := cl.execute(t, job)
	cl.wait(t, id, 3*time.Minute, func(r *api.Run) bool { return r.LogSize > 0 })
	pids := testsupport.Guests(t, vmh.host.Dir)
	if len(pids) != 1 {
		t.Fatalf("guests on %s: %v, want 1", vmh.name, pids)
	}
	vmh.proc.Kill()
	if err := syscall.Kill(pids[0], 0); err != nil {
		t.Fatalf("guest died with its worker (%v): nothing left for the reaper to prove", err)
	}
	vmh.proc.Start()
	r := cl.wait(t, id, 5*time.Minute, finished)
	if r.State != api.StateSucceeded || r.Attempt < 2 || r.Host != vmh.name {
		t.Fatalf("run: %+v\nworker log:\n%s", r, tail(vmh.proc.Log()))
	}
	if len(r.Artifacts) != 1 || r.Artifacts[0].Path != "a.txt" {
		t.Errorf("artifacts: %+v", r.Artifacts)
	}
	if c := cl.console(t, id); !strings.Contains(c, "attempt 2 kernel ") || !strings.Contains(c, " nic eth0 lo ") {
		t.Errorf("console: %q", c)
	}
	hosts, err := cl.client().ListHosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if offers := slices.Contains(h.Facts.Isolations, api.IsolationVM); offers != (h.Name == vmh.name) {
			t.Errorf("host %s offers %v", h.Name, h.Facts.Isolations)
		}
	}
	if left := testsupport.Guests(t, vmh.host.Dir); len(left) > 0 {
		t.Errorf("guests left: %v", left)
	}
	cl.assertNoLeftovers(t, plain, vmh)
	// The worker's pool (network/pool) stays; no run keeps a network.
	if runs, _ := os.ReadDir(filepath.Join(vmh.host.Dir, "network", "runs")); len(runs) > 0 {
		t.Errorf("networks of runs left: %v", runs)
	}
}

//go:build linux

package worker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// One host publishes its image; a fresh host with no images runs a job on
// it: it fetches the version, is SIGKILLed mid-fetch, resumes from the
// partial file on restart (a ranged download from where it stopped), runs
// the job on the version's snapshot, and the next run fetches nothing.
func TestFleetImagePublishFetchKilledResume(t *testing.T) {
	cl := newCluster(t, `lease_duration = "3s"`, `lease_check = "300ms"`)
	ctx := context.Background()
	admin := cl.srv.AdminToken()

	pub := testsupport.NewHost(t, cl.kiln, cl.ctrd, "")
	pub.MustKiln(t, "image", "create", "-n", "fleetbox", "-m", "busybox", "-q")
	if out := pub.MustKiln(t, "image", "publish", "fleetbox", "--server", cl.srv.URL, "--token", admin); strings.TrimSpace(out) != "fleetbox@1" {
		t.Fatalf("publish printed %q, want fleetbox@1", out)
	}
	// The same tree published again is the same version: packing is
	// deterministic.
	if out := pub.MustKiln(t, "image", "publish", "fleetbox", "--server", cl.srv.URL, "--token", admin); strings.TrimSpace(out) != "fleetbox@1" {
		t.Fatalf("second publish printed %q, want fleetbox@1 (a no-op)", out)
	}
	vs, err := cl.client().ListImageVersions(ctx, "fleetbox")
	if err != nil || len(vs) != 1 {
		t.Fatalf("versions %+v, %v", vs, err)
	}
	v := vs[0]
	if v.Method != "busybox" || v.OS != "linux" || v.Arch == "" {
		t.Fatalf("manifest %+v", v)
	}

	hold := v.BlobSize / 3
	gate := testsupport.StartBlobGate(t, cl.srv.URL, hold)
	n := cl.addWorker(t, "fresh", "", gate.URL) // no images of its own
	job := cl.addJob(t, `name = "on-fleet"
image = "fleetbox"
script = "echo hello from the fleet"
`)
	id := cl.execute(t, job)
	part := filepath.Join(n.host.Dir, "images", "fetch", v.Blob+".part")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if fi, err := os.Stat(part); err == nil && fi.Size() == hold {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fetch never reached %d bytes in %s\nworker log:\n%s", hold, part, tail(n.proc.Log()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := cl.wait(t, id, time.Minute, func(r *api.Run) bool { return r.Phase != "" })
	if !strings.Contains(r.Phase, "fetching image fleetbox@1") {
		t.Fatalf("phase %q while fetching", r.Phase)
	}
	// The host reports how far it is (every 2 s while bytes arrive).
	r = cl.wait(t, id, time.Minute, func(r *api.Run) bool { return strings.Contains(r.Phase, " done, ") })
	if !strings.Contains(r.Phase, "/s, ") || !strings.HasSuffix(r.Phase, " left") {
		t.Fatalf("phase %q: want the bytes done, the rate and the time left", r.Phase)
	}
	n.proc.Kill()
	gate.Release()
	n.proc.Start()

	r = cl.wait(t, id, 3*time.Minute, finished)
	if r.State != api.StateSucceeded {
		t.Fatalf("run %s: %s %s\nworker log:\n%s", id, r.State, r.Error, tail(n.proc.Log()))
	}
	if r.ImageDigest != v.TarDigest || r.Image != "fleetbox@1" || !strings.HasPrefix(r.Snapshot, "fleet.fleetbox@") {
		t.Fatalf("run recorded image %q digest %q snapshot %q; want fleetbox@1 %s", r.Image, r.ImageDigest, r.Snapshot, v.TarDigest)
	}
	if c := cl.console(t, id); !strings.Contains(c, "hello from the fleet") {
		t.Fatalf("console:\n%s", c)
	}
	ranges := gate.Ranges()
	if len(ranges) != 2 || ranges[0] != "" || ranges[1] != fmt.Sprintf("bytes=%d-", hold) {
		t.Fatalf("blob downloads with ranges %q; want one from the start and one resuming at %d", ranges, hold)
	}
	if _, err := os.Stat(part); !os.IsNotExist(err) {
		t.Fatalf("the partial blob is still there: %v", err)
	}

	// The next run on this host fetches nothing.
	id2 := cl.execute(t, job)
	if r := cl.wait(t, id2, 2*time.Minute, finished); r.State != api.StateSucceeded || r.ImageDigest != v.TarDigest {
		t.Fatalf("second run: %s %s %q", r.State, r.Error, r.ImageDigest)
	}
	if got := gate.Ranges(); len(got) != 2 {
		t.Fatalf("the second run downloaded again: %q", got)
	}
	// The host reports the version it holds.
	vs, _ = cl.client().ListImageVersions(ctx, "fleetbox")
	if len(vs) != 1 || len(vs[0].Hosts) != 1 || vs[0].Hosts[0] != "fresh" {
		t.Fatalf("hosts holding fleetbox@1: %+v", vs)
	}
	cl.assertNoLeftovers(t, n)
}

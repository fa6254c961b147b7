//go:build linux

package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestFleetImageTwins is issue 27's "done when": two freshly enrolled
// hosts with no images of their own run a reproduce = 2 job on an image
// that was only published to the server (from a third host that is not
// enrolled); both members record the same image digest, the group is
// reproducible, and a second group on the same hosts fetches nothing.
func TestFleetImageTwins(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	ctx := context.Background()

	// The builder: a host of the admin's that makes the image and
	// publishes it, and runs nothing.
	builder := testsupport.NewHost(t, cl.kiln, cl.ctrd, "")
	builder.MustKiln(t, "image", "create", "-n", "tiny", "-m", "busybox", "-q")
	out := builder.MustKiln(t, "image", "publish", "tiny", "-q", "--server", cl.srv.URL, "--token", cl.srv.AdminToken())
	if strings.TrimSpace(out) != "tiny@1" {
		t.Fatalf("publish printed %q, want tiny@1", out)
	}
	v, err := cl.client().GetImageVersion(ctx, "tiny", 0)
	if err != nil {
		t.Fatal(err)
	}

	w1 := cl.addWorker(t, "fresh-a", "", "")
	w2 := cl.addWorker(t, "fresh-b", "", "")
	job := cl.addJob(t, `name = "twins"
image = "tiny"
reproduce = 2
script = "set -e; cat /etc/os-release > /out/release 2>/dev/null || busybox > /out/release; echo $SOURCE_DATE_EPOCH > /out/epoch"
`)
	cl.waitHeartbeats(t, w1.name, w2.name)

	for round := 1; round <= 2; round++ {
		g := cl.waitGroup(t, cl.executeTwins(t, job), 5*time.Minute)
		hosts := map[string]bool{}
		for _, m := range g.Members {
			if m.State != api.StateSucceeded {
				t.Fatalf("round %d: member %s: %s %s\nconsole:\n%s", round, m.ID, m.State, m.Error, cl.console(t, m.ID))
			}
			if m.Image != "tiny@1" || m.ImageDigest != v.TarDigest {
				t.Fatalf("round %d: member %s pinned to %q %q, want tiny@1 %s", round, m.ID, m.Image, m.ImageDigest, v.TarDigest)
			}
			hosts[m.Host] = true
		}
		if !hosts[w1.name] || !hosts[w2.name] {
			t.Fatalf("round %d: group ran on %v, want both fresh hosts", round, hosts)
		}
		if !g.Verdict.Reproducible {
			t.Fatalf("round %d: twins on one image version differ: %+v", round, g.Verdict)
		}
	}
	// Each host fetched the version once, for its first run only.
	for _, n := range []*node{w1, w2} {
		if got := strings.Count(n.proc.Log(), "fetching image"); got != 1 {
			t.Errorf("%s fetched the image %d times over two runs, want 1\n%s", n.name, got, tail(n.proc.Log()))
		}
	}
	// The hosts report holding it, which the listing shows.
	deadline := time.Now().Add(30 * time.Second)
	for {
		vs, err := cl.client().ListImageVersions(ctx, "tiny")
		if err == nil && len(vs) == 1 && strings.Join(vs[0].Hosts, ",") == w1.name+","+w2.name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listing does not show both hosts holding tiny@1: %+v %v", vs, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cl.assertNoLeftovers(t, w1, w2)
}

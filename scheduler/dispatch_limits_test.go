package scheduler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestDispatchLimits: a job asking more than a host's maximum is not
// leased to it; the queued run says why, in the API and in `kiln run info`;
// a host whose maxima allow it takes it.
func TestDispatchLimits(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	small := hostFacts("bookworm")
	small.Limits = api.Limits{Memory: 16 << 30, Pids: 32768, Timeout: api.Duration(24 * time.Hour)}
	w := enroll(t, srv, "small", nil, small)

	addJob(t, admin, "name = \"big\"\nimage = \"bookworm\"\nscript = \"true\"\n[resources]\nmemory = \"64GiB\"\n")
	run, err := admin.ExecuteJobWith(ctx, "big", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if a, err := w.Lease(ctx, api.LeaseRequest{Facts: small, Wait: api.Duration(300 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("a host with memory max 16GiB got a job asking 64GiB: %+v %v", a, err)
	}
	got, err := admin.GetRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	const want = "no enrolled host allows memory=64GiB (max 16GiB)"
	if got.State != api.StateQueued || got.Waiting != want {
		t.Fatalf("run %s waiting %q, want queued and %q", got.State, got.Waiting, want)
	}
	out, _, code := srv.Run("run", "info", run.ID)
	if code != 0 || !strings.Contains(out, "waiting:") || !strings.Contains(out, want) {
		t.Fatalf("kiln run info (exit %d) does not say why:\n%s", code, out)
	}

	// A job asking nothing, or within the maxima, is leased.
	addJob(t, admin, "name = \"fits\"\nimage = \"bookworm\"\nscript = \"true\"\n[resources]\nmemory = \"8GiB\"\npids = 100\n")
	if _, err := admin.ExecuteJobWith(ctx, "fits", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	if a := mustLease(t, w, small, time.Second); a.Job.Name != "fits" {
		t.Fatalf("leased %s, want fits", a.Job.Name)
	}

	// Another limit on a second host: the reason lists each host.
	tiny := hostFacts("bookworm")
	tiny.Limits = api.Limits{Memory: 8 << 30}
	enroll(t, srv, "tiny", nil, tiny)
	got, err = admin.GetRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Waiting, "small: memory=64GiB (max 16GiB)") || !strings.Contains(got.Waiting, "tiny: memory=64GiB (max 8GiB)") {
		t.Fatalf("waiting %q does not name each host's maximum", got.Waiting)
	}

	big := hostFacts("bookworm")
	big.Limits = api.Limits{Memory: 128 << 30}
	wb := enroll(t, srv, "big", nil, big)
	got, err = admin.GetRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Waiting != "for a free slot on big" {
		t.Fatalf("waiting %q with a host that allows it", got.Waiting)
	}
	if a := mustLease(t, wb, big, time.Second); a.RunID != run.ID {
		t.Fatalf("leased %s, want %s", a.RunID, run.ID)
	}
	if got, err = admin.GetRun(ctx, run.ID); err != nil || got.Waiting != "" {
		t.Fatalf("leased run still says waiting %q (%v)", got.Waiting, err)
	}
}

package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// TestReplicasShareMaxRunning: an owner's max_running bounds its runs
// across replicas, not per replica. Owner ci-bot (max_running = 1) has a
// run executed through replica A while host h1 waits there, and one
// through replica B while h2 waits there: each replica would hand its own
// run at once to its own waiting worker without telling the other (see
// docs/replicas.md, Wake-ups), so neither queue alone sees the owner at
// its bound. Only one of the two is leased; the other one is leased once
// the first one's result is in.
func TestReplicasShareMaxRunning(t *testing.T) {
	_, srvs := replicas(t, 2, "[owners.ci-bot]", "max_running = 1")
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	tok, err := a.Client().CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci-bot"})
	if err != nil {
		t.Fatal(err)
	}
	addJob(t, a.ClientWith(tok.Token), "name = \"build\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	h1 := a.ClientWith(enroll(t, a, "h1", nil, facts).Token)
	h2 := b.ClientWith(enroll(t, a, "h2", nil, facts).Token)
	waitListening(t, a, chanRunName)
	waitListening(t, b, chanRunName)

	type lease struct {
		a   *api.Assignment
		err error
	}
	got := make(chan lease, 2)
	for _, w := range []*api.Client{h1, h2} {
		go func() {
			l, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(4 * time.Second)})
			got <- lease{l, err}
		}()
	}
	// Give both long polls a moment to wait on their replicas, so that
	// each execute is handed at once to its own replica's worker (the
	// case the queues cannot see). Were one late, its run would be
	// announced instead; the bound checked below holds either way.
	time.Sleep(500 * time.Millisecond)
	runs := map[string]bool{}
	for _, srv := range srvs {
		r, err := srv.ClientWith(tok.Token).ExecuteJobWith(ctx, "build", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		runs[r.ID] = true
	}
	var leased []*api.Assignment
	for range 2 {
		l := <-got
		if l.err != nil {
			t.Fatal(l.err)
		}
		if l.a != nil {
			leased = append(leased, l.a)
		}
	}
	if len(leased) != 1 {
		t.Fatalf("%d runs of ci-bot leased at once across the replicas, max_running is 1", len(leased))
	}
	first := leased[0]
	// The other run waits, and says why on both replicas.
	for id := range runs {
		if id == first.RunID {
			continue
		}
		for _, srv := range srvs {
			r, err := srv.Client().GetRun(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if r.State != api.StateQueued || r.Waiting != "owner ci-bot has 1 of 1 running" {
				t.Errorf("%s: run %s is %s, waiting %q; want queued, waiting \"owner ci-bot has 1 of 1 running\"", srv.URL, id, r.State, r.Waiting)
			}
		}
	}
	// The first one's holder reports; the second run goes to a host.
	r, err := a.Client().GetRun(ctx, first.RunID)
	if err != nil {
		t.Fatal(err)
	}
	holder := h1
	if r.Host == "h2" {
		holder = h2
	}
	if _, err := holder.ReportResult(ctx, first.RunID, api.ResultRequest{Fence: first.Fence}); err != nil {
		t.Fatal(err)
	}
	second := mustLease(t, h2, facts, 10*time.Second)
	if second.RunID == first.RunID || !runs[second.RunID] {
		t.Fatalf("after run %s ended, h2 leased %s; want the other run of %v", first.RunID, second.RunID, runs)
	}
}

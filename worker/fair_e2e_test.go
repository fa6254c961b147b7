//go:build linux

package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestFairDispatchBetweenOwners: two owners (two client tokens) share one
// host of 2 slots, real server and worker. Owner A queues 40 short runs,
// then owner B queues 1: B's run takes the next free slot, so it is
// leased before every run of A that was still waiting when B queued it,
// except those a worker had been handed already (at most one per slot: a
// claim under way when B's run was queued). Asserted by lease order,
// never by wall time.
func TestFairDispatchBetweenOwners(t *testing.T) {
	const slots, backlog = 2, 40
	cl := newCluster(t)
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 2\n")
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, "h1", "")
	n := &node{host: h, proc: testsupport.StartWorker(t, h), name: "h1"}

	ctx := context.Background()
	owner := func(name string) *api.Client {
		tok, err := cl.client().CreateClientToken(ctx, api.ClientTokenRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		c := cl.srv.ClientWith(tok.Token)
		if _, err := c.AddJob(ctx, &api.Job{Name: name + "-job", Image: "busybox", Script: "true"}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := owner("a"), owner("b")
	var aRuns []string
	for range backlog {
		r, err := a.ExecuteJobWith(ctx, "a-job", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		aRuns = append(aRuns, r.ID)
	}
	// A's runs take both slots before B queues (else B's run could be
	// leased first for want of competition, which proves nothing).
	for _, id := range aRuns[:slots] {
		cl.wait(t, id, 2*time.Minute, func(r *api.Run) bool { return r.State != api.StateQueued })
	}
	br, err := b.ExecuteJobWith(ctx, "b-job", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var waiting []string // A's runs still queued after B's was queued
	for _, id := range aRuns {
		r, err := a.GetRun(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State == api.StateQueued {
			waiting = append(waiting, id)
		}
	}
	if len(waiting) <= slots {
		t.Fatalf("only %d of A's runs still queued when B queued; the test needs a backlog", len(waiting))
	}
	bDone := cl.wait(t, br.ID, 3*time.Minute, finished)
	if bDone.State != api.StateSucceeded || bDone.Leased.IsZero() {
		t.Fatalf("B's run: %s %s, leased %v", bDone.State, bDone.Error, bDone.Leased)
	}
	var overtook []string
	for _, id := range waiting {
		r := cl.wait(t, id, 5*time.Minute, finished)
		if r.State != api.StateSucceeded {
			t.Fatalf("A's run %s: %s %s", id, r.State, r.Error)
		}
		if r.Attempt == 1 && r.Leased.Before(bDone.Leased) {
			overtook = append(overtook, id)
		}
	}
	if len(overtook) > slots {
		t.Fatalf("%d of A's runs that waited when B's run was queued were leased before it (%v); want at most %d (claims under way)",
			len(overtook), overtook, slots)
	}
	t.Logf("B's run leased after %d of A's %d waiting runs", len(overtook), len(waiting))
	cl.assertNoLeftovers(t, n)
}

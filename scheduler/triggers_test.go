package scheduler_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestTriggerSurvivesCrash: a server SIGKILLed after it stored a run's
// success and before it fired the run's trigger (held there by
// KILN_TRIGGER_TEST_PAUSE) fires it at its next start, and the triggered
// job runs exactly once however often the server starts again; a
// trigger fired normally is not fired again by a start either.
func TestTriggerSurvivesCrash(t *testing.T) {
	t.Setenv("KILN_TRIGGER_TEST_PAUSE", "1h")
	srv := testsupport.StartServer(t, `lease_duration = "10m"`)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"lib\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	addJob(t, admin, "name = \"watch\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:lib\"]\n")
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	w := enroll(t, srv, "h1", nil, facts)

	lib, err := admin.ExecuteJobWith(ctx, "lib", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, 5*time.Second)
	if a.RunID != lib.ID {
		t.Fatalf("leased %s, want lib's run %s", a.RunID, lib.ID)
	}
	// The result is stored, then the server waits before the trigger:
	// the answer never comes, the kill ends the request.
	go func() { _, _ = w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence}) }()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(srv.Log(), "pausing before firing triggers"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("server never reached the trigger:\n%s", srv.Log())
		}
	}
	srv.Kill()
	t.Setenv("KILN_TRIGGER_TEST_PAUSE", "")
	srv.Restart()

	watchRuns := func() []api.Run {
		t.Helper()
		l, err := admin.ListRuns(ctx, "watch", 0)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if r, err := admin.GetRun(ctx, lib.ID); err != nil || r.State != api.StateSucceeded {
		t.Fatalf("lib run after restart: %+v, %v", r, err)
	}
	l := watchRuns()
	if len(l) != 1 || l[0].Trigger != "on success:lib" {
		t.Fatalf("watch runs after the crash and restart: %+v", l)
	}
	// Started again (and again): the trigger is marked fired, nothing
	// executes twice.
	srv.Restart()
	srv.Restart()
	if l2 := watchRuns(); len(l2) != 1 || l2[0].ID != l[0].ID {
		t.Fatalf("watch runs after more restarts: %+v, want only %s", l2, l[0].ID)
	}

	// Without the pause: the trigger fires once, and a restart adds none.
	aw := mustLease(t, w, facts, 5*time.Second)
	if aw.RunID != l[0].ID {
		t.Fatalf("leased %s, want watch's run %s", aw.RunID, l[0].ID)
	}
	if _, err := w.ReportResult(ctx, aw.RunID, api.ResultRequest{Fence: aw.Fence}); err != nil {
		t.Fatal(err)
	}
	lib2, err := admin.ExecuteJobWith(ctx, "lib", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a2 := mustLease(t, w, facts, 5*time.Second)
	if _, err := w.ReportResult(ctx, a2.RunID, api.ResultRequest{Fence: a2.Fence}); err != nil || a2.RunID != lib2.ID {
		t.Fatalf("second lib run %s (leased %s): %v", lib2.ID, a2.RunID, err)
	}
	srv.Restart()
	if l3 := watchRuns(); len(l3) != 2 {
		t.Fatalf("watch runs after a second lib success and a restart: %+v, want 2", l3)
	}
}

// TestTriggerReplicasFireOnce: on PostgreSQL with two replicas, a trigger
// left pending by a replica SIGKILLed before firing it is fired by both
// when both start again at once, and the triggered job runs once.
func TestTriggerReplicasFireOnce(t *testing.T) {
	t.Setenv("KILN_TRIGGER_TEST_PAUSE", "1h")
	_, srvs := replicas(t, 2, `lease_duration = "10m"`)
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	admin := a.Client()
	addJob(t, admin, "name = \"lib\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	addJob(t, admin, "name = \"watch\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:lib\"]\n")
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	w := enroll(t, a, "h1", nil, facts)
	if _, err := admin.ExecuteJobWith(ctx, "lib", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, w, facts, 5*time.Second)
	go func() { _, _ = w.ReportResult(ctx, l.RunID, api.ResultRequest{Fence: l.Fence}) }()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(a.Log(), "pausing before firing triggers"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("server never reached the trigger:\n%s", a.Log())
		}
	}
	a.Kill()
	b.Kill()
	// Both replicas read the pending trigger at start, then wait 2s
	// before firing it: both fire it, and one run is made.
	t.Setenv("KILN_TRIGGER_TEST_PAUSE", "2s")
	var wg sync.WaitGroup
	for _, s := range srvs {
		wg.Add(1)
		go func() { defer wg.Done(); s.Restart() }()
	}
	wg.Wait()
	runs, err := b.Client().ListRuns(ctx, "watch", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 || runs[0].Trigger != "on success:lib" {
		t.Fatalf("watch runs after both replicas started: %+v", runs)
	}
}

package scheduler

import (
	"context"
	"errors"
	"testing"

	"github.com/kiln-build/kiln/api"
)

// TestTriggerCauseOnce: a trigger fired again for the same cause (as a
// start after a crash, or a second replica, fires a pending one) executes
// nothing, even once the first run it executed has ended; another cause
// executes the job again.
func TestTriggerCauseOnce(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, "name = \"lib\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	g.add(t, "name = \"watch\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:lib\"]\n")
	ctx := context.Background()
	count := func() int {
		l, err := g.listRuns(ctx, adminPrincipal, "watch", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	for i, c := range []struct {
		cause string
		fired int
		want  int
	}{
		{"run:41", 1, 1},
		{"run:41", 0, 1}, // while the first is queued
		{"run:41", 0, 1}, // once it ended (taken below)
		{"run:42", 1, 2},
		{"", 1, 3}, // no cause (image triggers): no dedup
	} {
		runs, incomplete := g.fireEvent(ctx, "success:lib", 0, c.cause)
		if got := len(runs); got != c.fired || incomplete {
			t.Fatalf("step %d (%q): %d runs executed, want %d", i, c.cause, got, c.fired)
		}
		if n := count(); n != c.want {
			t.Fatalf("step %d (%q): watch has %d runs, want %d", i, c.cause, n, c.want)
		}
		if i == 1 {
			g.take(t, "watch", 0, nil)
		}
	}
	if _, err := g.executeGraph(ctx, adminPrincipal, "watch", api.ExecuteRequest{}, "on success:lib", "run:42"); !errors.Is(err, errTriggerFired) {
		t.Fatalf("execute with a fired cause: %v, want errTriggerFired", err)
	}
}

package scheduler

import (
	"context"
	"errors"
	"strings"
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

// TestImageTriggerPendingAtStart: an image version stored by a server
// that stopped before firing its image triggers (the store's write
// alone, as a crash leaves it) is fired by the next start, once: further
// starts, and the version's own firing, execute nothing more.
func TestImageTriggerPendingAtStart(t *testing.T) {
	g := newGraphServer(t)
	ctx := context.Background()
	g.add(t, "name = \"rebuild\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"image:bookworm\"]\n")
	v := api.ImageVersion{Name: "bookworm", Arch: "amd64", OS: "linux", TarDigest: "sha256:" + strings.Repeat("c", 64), TarSize: 4096,
		Blob: strings.Repeat("c", 64), BlobSize: 5}
	out, _, err := g.st.publishImage(ctx, v, g.now())
	if err != nil {
		t.Fatal(err)
	}
	count := func() []api.Run {
		t.Helper()
		l, err := g.listRuns(ctx, adminPrincipal, "rebuild", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := count(); len(l) != 0 {
		t.Fatalf("rebuild ran before any firing: %+v", l)
	}
	g.restart(t)
	l := count()
	if len(l) != 1 || l[0].Trigger != "on image:bookworm" {
		t.Fatalf("rebuild runs after the start: %+v", l)
	}
	g.restart(t)
	if runs := g.imagePublished(ctx, "bookworm", int64(out.Version)); len(runs) != 0 {
		t.Fatalf("the version's triggers fired twice: %+v", runs)
	}
	if l2 := count(); len(l2) != 1 || l2[0].ID != l[0].ID {
		t.Fatalf("rebuild runs after another start: %+v, want only %s", l2, l[0].ID)
	}
}

package scheduler

import (
	"slices"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

func TestGroupVerdict(t *testing.T) {
	art := func(p, sha string) api.Artifact { return api.Artifact{Path: p, SHA256: sha} }
	run := func(id, host, state string, arts ...api.Artifact) api.Run {
		return api.Run{ID: id, Host: host, State: state, Artifacts: arts}
	}
	ok := api.StateSucceeded
	tests := []struct {
		name         string
		members      []api.Run
		reproducible bool
		sameHost     bool
		differs      []string
		missing      []string
		failed       []string
	}{
		{"identical", []api.Run{run("1", "a", ok, art("x", "s1")), run("2", "b", ok, art("x", "s1"))}, true, false, nil, nil, nil},
		{"differs", []api.Run{run("1", "a", ok, art("x", "s1"), art("y", "s")), run("2", "b", ok, art("x", "s2"), art("y", "s"))}, false, false, []string{"x"}, nil, nil},
		{"missing", []api.Run{run("1", "a", ok, art("x", "s1")), run("2", "b", ok)}, false, false, nil, []string{"x"}, nil},
		{"failed member", []api.Run{run("1", "a", ok), run("2", "b", api.StateFailed)}, false, false, nil, nil, []string{"2"}},
		{"same host", []api.Run{run("1", "a", ok), run("2", "a", ok), run("3", "b", ok)}, true, true, nil, nil, nil},
		{"no artifacts at all", []api.Run{run("1", "a", ok), run("2", "b", ok)}, true, false, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := groupVerdict(tt.members, time.Unix(1, 0))
			var missing []string
			for _, m := range v.Missing {
				missing = append(missing, m.Path)
			}
			if v.Reproducible != tt.reproducible || v.SameHost != tt.sameHost || !slices.Equal(v.Differs, tt.differs) ||
				!slices.Equal(missing, tt.missing) || !slices.Equal(v.Failed, tt.failed) {
				t.Fatalf("verdict %+v", v)
			}
		})
	}
}

func TestDispatcherGroupPlacement(t *testing.T) {
	now := time.Unix(1000, 0)
	d := &dispatcher{reproduceWait: 30 * time.Second, now: func() time.Time { return now }}
	job := &api.Job{Name: "j", Image: "busybox"}
	facts := &api.Facts{FreeSlots: 2, Images: []api.ImageFact{{Name: "busybox", Versions: []string{"1"}}}}
	d.offer(&qrun{id: 1, job: job, queuedAt: now, group: 7})
	d.offer(&qrun{id: 2, job: job, queuedAt: now, group: 7})
	d.offer(&qrun{id: 3, job: job, queuedAt: now})
	w := func(host string) *waiter { return &waiter{host: host, facts: facts, ch: make(chan *qrun, 1)} }

	if q := d.take(w("a")); q == nil || q.id != 1 {
		t.Fatalf("a: %+v", q)
	}
	// a holds member 1: it skips member 2 and gets the ungrouped run.
	if q := d.take(w("a")); q == nil || q.id != 3 {
		t.Fatalf("a again: %+v, want run 3", q)
	}
	if q := d.take(w("a")); q != nil {
		t.Fatalf("a got %d, another member of its group, before reproduce_wait", q.id)
	}
	d.unwait(d.waiters[0])
	now = now.Add(31 * time.Second)
	if q := d.take(w("a")); q == nil || q.id != 2 {
		t.Fatalf("after reproduce_wait a must get member 2: %+v", q)
	}
	d.forget(7)
	if len(d.placed) != 0 {
		t.Fatalf("placement of a decided group kept: %v", d.placed)
	}
}

// TestDispatcherUnhand: a member handed to a host whose claim then leases
// nothing (a stale entry: the run was leased through another replica)
// leaves the host free for the group's other members; a host placed before
// the hand-out stays placed.
func TestDispatcherUnhand(t *testing.T) {
	now := time.Unix(1000, 0)
	d := &dispatcher{reproduceWait: time.Hour, now: func() time.Time { return now }}
	job := &api.Job{Name: "j", Image: "busybox"}
	facts := &api.Facts{FreeSlots: 2, Images: []api.ImageFact{{Name: "busybox", Versions: []string{"1"}}}}
	w := func(host string) *waiter { return &waiter{host: host, facts: facts, ch: make(chan *qrun, 1)} }
	stale := &qrun{id: 1, job: job, queuedAt: now, group: 7}
	d.offer(stale)
	d.offer(&qrun{id: 2, job: job, queuedAt: now, group: 7})

	wb := w("b")
	if q := d.take(wb); q != stale {
		t.Fatalf("b: %+v, want the stale member 1", q)
	}
	d.unhand(stale, wb) // its claim found it leased elsewhere
	if q := d.take(w("b")); q == nil || q.id != 2 {
		t.Fatalf("b after its claim of member 1 missed: %+v, want member 2", q)
	}

	// c holds a member (placed at start-up); a late hand-out after
	// reproduce_wait that misses does not forget that.
	d.placedAt(7, "c")
	d.offer(&qrun{id: 3, job: job, queuedAt: now.Add(-2 * time.Hour), group: 7})
	wc := w("c")
	q := d.take(wc)
	if q == nil || q.id != 3 {
		t.Fatalf("c: %+v, want member 3, which waited past reproduce_wait", q)
	}
	d.unhand(q, wc)
	if !d.placed[7]["c"] {
		t.Fatal("a missed claim forgot that c holds a member of the group")
	}
}

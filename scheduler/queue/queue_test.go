package queue

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

var (
	testJob   = &api.Job{Name: "j", Image: "busybox"}
	testFacts = &api.Facts{FreeSlots: 2, Images: []api.ImageFact{{Name: "busybox", Versions: []string{"1"}}}}
)

// poll takes the run d has for host now, without waiting (nil for none).
func poll(d *Dispatcher, host string) *Run {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return d.Take(ctx, NewWaiter(host, testFacts))
}

func ids(runs ...*Run) []int64 {
	var out []int64
	for _, q := range runs {
		if q == nil {
			out = append(out, 0)
		} else {
			out = append(out, q.ID)
		}
	}
	return out
}

// Runs are handed out oldest (lowest id) first whatever the order they
// were offered in, each once, and only to a host that can run them.
func TestDispatchOrder(t *testing.T) {
	other := &api.Job{Name: "k", Image: "alpine"}
	diff := &Run{ID: 9, Job: testJob, Kind: api.KindDiffoscope}
	for _, tc := range []struct {
		name  string
		offer []*Run
		want  []int64 // the runs successive polls get, 0 for none
	}{
		{"oldest first", []*Run{{ID: 3, Job: testJob}, {ID: 1, Job: testJob}, {ID: 2, Job: testJob}}, []int64{1, 2, 3, 0}},
		{"offered twice, queued once", []*Run{{ID: 1, Job: testJob}, {ID: 1, Job: testJob}}, []int64{1, 0}},
		{"skips what the host cannot run", []*Run{{ID: 1, Job: other}, {ID: 2, Job: testJob}}, []int64{2, 0}},
		{"a comparison needs the diffoscope hook", []*Run{diff}, []int64{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(time.Hour, time.Now)
			for _, q := range tc.offer {
				if d.Offer(q) {
					t.Fatalf("run %d handed with no waiter", q.ID)
				}
			}
			var got []*Run
			for range tc.want {
				got = append(got, poll(d, "a"))
			}
			if g := ids(got...); !slices.Equal(g, tc.want) {
				t.Fatalf("polls got %v, want %v", g, tc.want)
			}
		})
	}
}

// A run offered while workers wait goes to the longest-waiting one that
// can run it; a worker whose wait ended gets nothing.
func TestDispatchLongestWaiterFirst(t *testing.T) {
	d := New(time.Hour, time.Now)
	none := &api.Facts{FreeSlots: 0}
	busy, first, second, gone := NewWaiter("busy", none), NewWaiter("a", testFacts), NewWaiter("b", testFacts), NewWaiter("c", testFacts)
	for _, w := range []*Waiter{busy, gone, first, second} {
		if q := d.take(w); q != nil {
			t.Fatalf("empty queue handed run %d", q.ID)
		}
	}
	if !d.unwait(gone) {
		t.Fatal("unwait of a waiting worker reported a hand-out")
	}
	for _, id := range []int64{1, 2} {
		if !d.Offer(&Run{ID: id, Job: testJob}) {
			t.Fatalf("run %d queued while workers wait", id)
		}
	}
	if q := <-first.ch; q.ID != 1 {
		t.Fatalf("the longest waiter got run %d, want 1", q.ID)
	}
	if q := <-second.ch; q.ID != 2 {
		t.Fatalf("the next waiter got run %d, want 2", q.ID)
	}
	if d.unwait(first) || !d.unwait(busy) {
		t.Fatal("waiters left in the wrong state")
	}
	if d.Depth() != 0 || d.MaxID() != 2 {
		t.Fatalf("depth %d, max id %d", d.Depth(), d.MaxID())
	}
}

// Take waits for a run offered later, and a run handed back with Return
// is taken again.
func TestTakeWaitsAndReturn(t *testing.T) {
	d := New(time.Hour, time.Now)
	w := NewWaiter("a", testFacts)
	got := make(chan *Run, 1)
	go func() { got <- d.Take(context.Background(), w) }()
	// Whether the offer comes before Take registers the waiter (it is
	// queued, and Take finds it) or after (it is handed), Take gets it.
	q := &Run{ID: 5, Job: testJob}
	d.Offer(q)
	r := <-got
	if r != q {
		t.Fatalf("Take got %v, want run 5", ids(r))
	}
	d.Return(r, w)
	if r := poll(d, "a"); r != q {
		t.Fatalf("after Return: %v, want run 5", ids(r))
	}
}

func TestDispatcherGroupPlacement(t *testing.T) {
	now := time.Unix(1000, 0)
	d := New(30*time.Second, func() time.Time { return now })
	d.Offer(&Run{ID: 1, Job: testJob, QueuedAt: now, Group: 7})
	d.Offer(&Run{ID: 2, Job: testJob, QueuedAt: now, Group: 7})
	d.Offer(&Run{ID: 3, Job: testJob, QueuedAt: now})

	if q := poll(d, "a"); q == nil || q.ID != 1 {
		t.Fatalf("a: %v", ids(q))
	}
	// a holds member 1: it skips member 2 and gets the ungrouped run.
	if q := poll(d, "a"); q == nil || q.ID != 3 {
		t.Fatalf("a again: %v, want run 3", ids(q))
	}
	if q := poll(d, "a"); q != nil {
		t.Fatalf("a got %d, another member of its group, before reproduce_wait", q.ID)
	}
	now = now.Add(31 * time.Second)
	if q := poll(d, "a"); q == nil || q.ID != 2 {
		t.Fatalf("after reproduce_wait a must get member 2: %v", ids(q))
	}
	d.Forget(7)
	if d.Placed(7, "a") {
		t.Fatal("placement of a decided group kept")
	}
}

// TestDispatcherUnhand: a member handed to a host whose claim then leases
// nothing (a stale entry: the run was leased through another replica)
// leaves the host free for the group's other members; a host placed before
// the hand-out stays placed.
func TestDispatcherUnhand(t *testing.T) {
	now := time.Unix(1000, 0)
	d := New(time.Hour, func() time.Time { return now })
	stale := &Run{ID: 1, Job: testJob, QueuedAt: now, Group: 7}
	d.Offer(stale)
	d.Offer(&Run{ID: 2, Job: testJob, QueuedAt: now, Group: 7})

	wb := NewWaiter("b", testFacts)
	if q := d.take(wb); q != stale {
		t.Fatalf("b: %v, want the stale member 1", ids(q))
	}
	d.Unhand(stale, wb) // its claim found it leased elsewhere
	if q := poll(d, "b"); q == nil || q.ID != 2 {
		t.Fatalf("b after its claim of member 1 missed: %v, want member 2", ids(q))
	}

	// c holds a member (placed at start-up); a late hand-out after
	// reproduce_wait that misses does not forget that.
	d.PlacedAt(7, "c")
	d.Offer(&Run{ID: 3, Job: testJob, QueuedAt: now.Add(-2 * time.Hour), Group: 7})
	wc := NewWaiter("c", testFacts)
	q := d.take(wc)
	if q == nil || q.ID != 3 {
		t.Fatalf("c: %v, want member 3, which waited past reproduce_wait", ids(q))
	}
	d.Unhand(q, wc)
	if !d.Placed(7, "c") {
		t.Fatal("a missed claim forgot that c holds a member of the group")
	}
}

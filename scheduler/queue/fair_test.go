package queue

import (
	"context"
	"slices"
	"testing"
	"time"
)

// owned is a run of owner o with priority prio.
func owned(id int64, o string, prio int) *Run {
	return &Run{ID: id, Job: testJob, Owner: o, Priority: prio}
}

// backlog is n runs of owner o from id first on, priority 0.
func backlog(o string, first int64, n int) []*Run {
	var out []*Run
	for id := first; id < first+int64(n); id++ {
		out = append(out, owned(id, o, 0))
	}
	return out
}

// serve runs the queue on one host of slots slots whose runs end in the
// order they started, and lists the runs in the order the host got them.
func serve(d *Dispatcher, slots int) []int64 {
	var got, running []int64
	for {
		for len(running) < slots {
			q := poll(d, "a")
			if q == nil {
				break
			}
			got = append(got, q.ID)
			running = append(running, q.ID)
		}
		if len(running) == 0 {
			return got
		}
		d.Done(running[0])
		running = running[1:]
	}
}

func TestFairOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits map[string]Limits
		offer  []*Run
		slots  int
		want   []int64
	}{
		{
			name:  "unequal backlogs alternate",
			offer: append(backlog("A", 1, 6), backlog("B", 7, 2)...),
			slots: 2,
			want:  []int64{1, 7, 2, 8, 3, 4, 5, 6},
		},
		{
			name:  "a late owner's first run takes the next free slot",
			offer: append(backlog("A", 1, 5), owned(6, "B", 0)),
			slots: 2,
			want:  []int64{1, 6, 2, 3, 4, 5},
		},
		{
			// Every owner runs nothing when the only slot frees: the
			// owner served longest ago wins, not the oldest backlog.
			name:  "one slot takes turns",
			offer: append(backlog("A", 1, 4), backlog("B", 5, 2)...),
			slots: 1,
			want:  []int64{1, 5, 2, 6, 3, 4},
		},
		{
			name:   "share 2 gets twice the slots",
			limits: map[string]Limits{"A": {Share: 2}},
			offer:  append(backlog("A", 1, 6), backlog("B", 7, 6)...),
			slots:  3,
			want:   []int64{1, 7, 2, 3, 8, 4, 5, 9, 6, 10, 11, 12},
		},
		{
			name:  "priority orders one owner's runs, then age",
			offer: []*Run{owned(1, "A", 0), owned(2, "A", 5), owned(3, "A", 1), owned(4, "A", 5)},
			slots: 1,
			want:  []int64{2, 4, 3, 1},
		},
		{
			name:  "priority does not jump owners",
			offer: []*Run{owned(1, "A", 0), owned(2, "A", 0), owned(3, "B", 100), owned(4, "B", 100)},
			slots: 1,
			want:  []int64{1, 3, 2, 4},
		},
		{
			name:   "max_running leaves the slot to others",
			limits: map[string]Limits{"A": {MaxRunning: 1}},
			offer:  append(backlog("A", 1, 3), backlog("B", 4, 3)...),
			slots:  3,
			want:   []int64{1, 4, 5, 2, 6, 3},
		},
		{
			name:   "max_running idles a slot rather than exceed it",
			limits: map[string]Limits{"A": {MaxRunning: 2}},
			offer:  backlog("A", 1, 4),
			slots:  3,
			want:   []int64{1, 2, 3, 4},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(time.Hour, time.Now)
			d.SetLimits(func(o string) Limits { return tc.limits[o] })
			for _, q := range tc.offer {
				d.Offer(q)
			}
			if got := serve(d, tc.slots); !slices.Equal(got, tc.want) {
				t.Fatalf("host got %v, want %v", got, tc.want)
			}
		})
	}
}

// An owner at its max_running gets no slot, even for a waiting worker
// that nothing else keeps busy, until one of its runs is done: then the
// waiter gets its next run at once.
func TestMaxRunningHoldsAndReleases(t *testing.T) {
	d := New(time.Hour, time.Now)
	d.SetLimits(func(string) Limits { return Limits{MaxRunning: 1} })
	d.Offer(owned(1, "A", 0))
	if q := poll(d, "a"); q == nil || q.ID != 1 {
		t.Fatalf("first poll got %v, want run 1", ids(q))
	}
	w := NewWaiter("b", testFacts)
	if q := d.take(w); q != nil {
		t.Fatalf("empty queue handed run %d", q.ID)
	}
	if d.Offer(owned(2, "A", 0)) {
		t.Fatal("run 2 handed to a waiter while its owner is at max_running")
	}
	if w := d.Why(2); !w.Queued || w.Running != 1 || w.MaxRunning != 1 {
		t.Fatalf("Why(2) = %+v, want queued behind 1 of 1 running", w)
	}
	d.Done(1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	select {
	case q := <-w.ch:
		if q.ID != 2 {
			t.Fatalf("waiter got run %d, want 2", q.ID)
		}
	case <-ctx.Done():
		t.Fatal("run 2 not handed to the waiter after run 1 was done")
	}
	// A claim that leased nothing gives the slot back.
	d.Unhand(owned(2, "A", 0), w)
	if w := d.Why(3); w.Queued {
		t.Fatalf("Why of an unknown run: %+v", w)
	}
	d.Offer(owned(3, "A", 0))
	if q := poll(d, "a"); q == nil || q.ID != 3 {
		t.Fatalf("after Unhand got %v, want run 3", ids(q))
	}
}

func TestWhy(t *testing.T) {
	d := New(time.Hour, time.Now)
	for _, q := range []*Run{owned(1, "A", 5), owned(2, "A", 0), owned(3, "A", 5), owned(4, "A", 0), owned(5, "B", 9)} {
		d.Offer(q)
	}
	for _, tc := range []struct {
		id           int64
		ahead, prior int
	}{{1, 0, 0}, {3, 1, 0}, {2, 2, 2}, {4, 3, 2}, {5, 0, 0}} {
		w := d.Why(tc.id)
		if !w.Queued || w.Ahead != tc.ahead || w.HigherPriority != tc.prior {
			t.Errorf("Why(%d) = %+v, want %d ahead, %d of higher priority", tc.id, w, tc.ahead, tc.prior)
		}
	}
	d.Remove(1)
	if w := d.Why(3); w.Ahead != 0 {
		t.Errorf("after Remove(1), Why(3) = %+v, want none ahead", w)
	}
}

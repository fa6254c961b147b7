package queue

import (
	"context"
	"testing"
	"time"
)

// TestFullHoldsOwner: an owner a claim found at its max_running across
// replicas (Full) gets no slot here, though this queue counts none of its
// runs running, while other owners do. The end of a run this queue never
// counted (leased through another replica: maybe the owner's) lets the
// owner's run go to a waiting worker, and so does the wait running out
// when no end is heard of; the end of another owner's run does not.
func TestFullHoldsOwner(t *testing.T) {
	tests := []struct {
		name    string
		release func(d *Dispatcher)
	}{
		{"a run ends elsewhere", func(d *Dispatcher) { d.Done(999) }},
		{"the wait runs out", func(*Dispatcher) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(time.Hour, time.Now)
			d.SetLimits(func(string) Limits { return Limits{MaxRunning: 1} })
			wait := time.Hour
			if tt.name == "the wait runs out" {
				wait = 50 * time.Millisecond
			}
			d.Full("A", wait)
			d.Offer(owned(1, "A", 0))
			d.Offer(owned(2, "B", 0))
			if q := poll(d, "h"); q == nil || q.ID != 2 {
				t.Fatalf("first take %v, want run 2 of B (A is full elsewhere)", ids(q))
			}
			if q := poll(d, "h"); q != nil {
				t.Fatalf("took run %d of a full owner", q.ID)
			}
			if w := d.Why(1); !w.Queued {
				t.Fatalf("run 1 left the queue: %+v", w)
			}
			// B's run ends: nothing to do with A, which stays full.
			d.Done(2)
			if q := poll(d, "h"); q != nil {
				t.Fatalf("took run %d of a full owner after another owner's run ended", q.ID)
			}
			// A worker waits; the release hands it A's run.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got := make(chan *Run, 1)
			go func() { got <- d.Take(ctx, NewWaiter("h", testFacts)) }()
			for d.waiting() == 0 {
				time.Sleep(time.Millisecond)
			}
			tt.release(d)
			if q := <-got; q == nil || q.ID != 1 {
				t.Fatalf("after the release the waiter got %v, want run 1", ids(q))
			}
		})
	}
}

// waiting counts the workers waiting.
func (d *Dispatcher) waiting() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.waiters)
}

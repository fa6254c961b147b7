// Package queue matches queued runs with the workers waiting for one:
// oldest run first, longest-waiting worker first, members of a reproduce
// group on distinct hosts. It holds no database: the server's store is the
// truth, this queue an index of it rebuilt at start-up, and a claim in the
// store re-checks every run handed out here, so a stale entry can cost a
// retry but never a double lease.
package queue

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
)

// Run is a queued run as the dispatcher sees it.
type Run struct {
	ID       int64
	Job      *api.Job
	QueuedAt time.Time
	Group    int64  // reproduce group, 0 for none
	Kind     string // api.KindJob or api.KindDiffoscope
	// Shared: other replicas may hold the run in their queues (it was
	// announced, or came from them), so its lease is announced for them
	// to drop it. A run handed at once to a worker waiting here never is.
	Shared bool
}

// Waiter is one worker's wait for a run (a lease long-poll); make one per
// wait with NewWaiter.
type Waiter struct {
	host  string
	facts *api.Facts
	ch    chan *Run // buffered 1: the run handed to this waiter
	// placed: handing the run out placed host in the run's group, which
	// Unhand undoes when the claim then leases nothing (set under d.mu
	// before the run is handed).
	placed bool
}

// NewWaiter is a wait of host, which reported facts.
func NewWaiter(host string, facts *api.Facts) *Waiter {
	return &Waiter{host: host, facts: facts, ch: make(chan *Run, 1)}
}

// Dispatcher matches queued runs with waiting workers. All methods are safe
// for concurrent use.
type Dispatcher struct {
	mu      sync.Mutex
	queue   []*Run // sorted by ID (= age)
	waiters []*Waiter
	// placed holds, per undecided reproduce group, the hosts a member was
	// handed to; a host there gets no other member of the group until the
	// member has waited reproduceWait (then distinct slots of one host
	// are better than no verdict).
	placed        map[int64]map[string]bool
	reproduceWait time.Duration
	now           func() time.Time
	maxSeen       int64 // the newest run ever offered
}

// New is an empty dispatcher; now is the clock that reproduceWait is
// measured by.
func New(reproduceWait time.Duration, now func() time.Time) *Dispatcher {
	return &Dispatcher{reproduceWait: reproduceWait, now: now, placed: map[int64]map[string]bool{}}
}

// ReproduceWait is how long a member of a reproduce group waits for a host
// holding no other member before any host may take it.
func (d *Dispatcher) ReproduceWait() time.Duration { return d.reproduceWait }

// fits reports whether host (with facts) may take q. Called with d.mu held.
func (d *Dispatcher) fits(q *Run, host string, facts *api.Facts) bool {
	if q.Kind == api.KindDiffoscope {
		// A comparison needs no image, only the admin's diffoscope hook.
		return facts.FreeSlots > 0 && facts.HasPostHook(api.DiffoscopeHook)
	}
	if !Matches(q.Job, facts) {
		return false
	}
	if q.Group == 0 || !d.placed[q.Group][host] {
		return true
	}
	return d.now().Sub(q.QueuedAt) >= d.reproduceWait
}

// handOut records that q goes to w's host, so that no other member of
// its group goes there while the claim is under way. Called with d.mu held.
func (d *Dispatcher) handOut(q *Run, w *Waiter) {
	w.placed = q.Group != 0 && !d.placed[q.Group][w.host]
	if w.placed {
		d.place(q.Group, w.host)
	}
}

// Unhand undoes the placement that handing q to w made, after q's claim by
// w leased nothing: the host holds no member for it. Kept, a placement
// made for a run that was already leased elsewhere (a stale entry, e.g.
// after a leased notification overtook the queued one) would keep the
// group's other members from a host that may take them until
// reproduce_wait. A host placed before the hand-out stays placed.
func (d *Dispatcher) Unhand(q *Run, w *Waiter) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !w.placed {
		return
	}
	w.placed = false
	delete(d.placed[q.Group], w.host)
}

// Return gives q, handed to w but not leased, back: Unhand, then Offer.
func (d *Dispatcher) Return(q *Run, w *Waiter) {
	d.Unhand(q, w)
	d.Offer(q)
}

// place records host as holding a member of group. Called with d.mu held.
func (d *Dispatcher) place(group int64, host string) {
	if d.placed[group] == nil {
		d.placed[group] = map[string]bool{}
	}
	d.placed[group][host] = true
}

// PlacedAt records that host holds a member of group (restored at
// start-up, or learnt from another replica's claim).
func (d *Dispatcher) PlacedAt(group int64, host string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.place(group, host)
}

// Placed reports whether host holds a member of group.
func (d *Dispatcher) Placed(group int64, host string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.placed[group][host]
}

// Forget drops a decided group's placements.
func (d *Dispatcher) Forget(group int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.placed, group)
}

// Offer hands q to the first waiter that can run it and reports true, or
// queues it (once: a run queued already is not queued again).
func (d *Dispatcher) Offer(q *Run) (handed bool) { return d.offer(q, false) }

// OfferOrShare is Offer for a new run that the caller announces to the
// other replicas unless it is handed: then q is queued Shared (set before
// any worker here can take it).
func (d *Dispatcher) OfferOrShare(q *Run) (handed bool) { return d.offer(q, true) }

func (d *Dispatcher) offer(q *Run, share bool) (handed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.maxSeen = max(d.maxSeen, q.ID)
	for i, w := range d.waiters {
		if d.fits(q, w.host, w.facts) {
			d.waiters = slices.Delete(d.waiters, i, i+1)
			d.handOut(q, w)
			w.ch <- q
			return true
		}
	}
	i := sort.Search(len(d.queue), func(i int) bool { return d.queue[i].ID >= q.ID })
	if i < len(d.queue) && d.queue[i].ID == q.ID {
		return false
	}
	if share {
		q.Shared = true
	}
	d.queue = slices.Insert(d.queue, i, q)
	return false
}

// Take returns the oldest queued run w's host can run, waiting for one to
// be offered until ctx ends; nil if none came. The run is w's to claim:
// if the claim leases nothing, give it back with Return (or Unhand).
func (d *Dispatcher) Take(ctx context.Context, w *Waiter) *Run {
	if q := d.take(w); q != nil {
		return q
	}
	select {
	case q := <-w.ch:
		return q
	case <-ctx.Done():
	}
	if d.unwait(w) {
		return nil
	}
	return <-w.ch // handed while ctx ended
}

// take removes and returns the oldest queued run w's host can run; if
// there is none it registers w as waiting and returns nil.
func (d *Dispatcher) take(w *Waiter) *Run {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, q := range d.queue {
		if d.fits(q, w.host, w.facts) {
			d.queue = slices.Delete(d.queue, i, i+1)
			d.handOut(q, w)
			return q
		}
	}
	d.waiters = append(d.waiters, w)
	return nil
}

// unwait removes w; false means a run was already handed to it.
func (d *Dispatcher) unwait(w *Waiter) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, x := range d.waiters {
		if x == w {
			d.waiters = slices.Delete(d.waiters, i, i+1)
			return true
		}
	}
	return false
}

// Remove drops run id from the queue (it was leased elsewhere, cancelled,
// or deleted); a run not queued is no error.
func (d *Dispatcher) Remove(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = slices.DeleteFunc(d.queue, func(q *Run) bool { return q.ID == id })
}

// MaxID is the newest run ever offered (0 for none).
func (d *Dispatcher) MaxID() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxSeen
}

// Depth is the number of queued runs.
func (d *Dispatcher) Depth() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue)
}

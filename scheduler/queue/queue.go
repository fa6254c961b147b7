// Package queue matches queued runs with the workers waiting for one:
// fairly between owners (a host's free slot goes to the owner with the
// least running work for its share, never to one at its max_running),
// within one owner by priority then age, longest-waiting worker first,
// members of a reproduce group on distinct hosts. It holds no database: the server's store is the
// truth, this queue an index of it rebuilt at start-up, and a claim in the
// store re-checks every run handed out here, so a stale entry can cost a
// retry but never a double lease.
package queue

import (
	"cmp"
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
	// Owner is the owner key of the run (the client token or group that
	// owns its job); runs are shared fairly between owners.
	Owner string
	// Priority orders the runs of one owner: higher first, then older.
	Priority int
	// Image is the server-held image version the run is pinned to (nil:
	// the job names one of the hosts' own images). A pinned run fits a
	// host by the version's arch and os (MismatchImage), and goes to a
	// host holding the version (Facts.FleetImages) before one that must
	// fetch it.
	Image *api.ImageVersion
	// JobName and Rev are the job and revision the run was queued of, as
	// the server's store names them (the queue does not read them): what
	// another replica needs to be told of the run.
	JobName string
	Rev     int
	// Shared: other replicas may hold the run in their queues (it was
	// announced, or came from them), so its lease is announced for them
	// to drop it. A run handed at once to a worker waiting here never is.
	Shared bool
}

// before reports whether q goes before r among one owner's runs.
func (q *Run) before(r *Run) bool {
	if q.Priority != r.Priority {
		return q.Priority > r.Priority
	}
	return q.ID < r.ID
}

// Limits are an owner's dispatch rules.
type Limits struct {
	// Share weighs the owner's running work: an owner with share 2 gets
	// a free slot before one with share 1 until it runs twice as many.
	// Below 1 counts as 1.
	Share int
	// MaxRunning bounds the owner's leased and running runs; 0: no bound.
	MaxRunning int
}

// owner is one owner's queue and running count.
type owner struct {
	runs    []*Run // sorted by Run.before
	running int    // handed out and not yet done
	served  uint64 // when it was last handed a run (Dispatcher.served)
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
	owners  map[string]*owner
	queued  map[int64]*Run   // every queued run, by ID
	running map[int64]string // the owner of each run handed out and not done
	waiters []*Waiter
	limits  func(owner string) Limits
	// placed holds, per undecided reproduce group, the hosts a member was
	// handed to; a host there gets no other member of the group until the
	// member has waited reproduceWait (then distinct slots of one host
	// are better than no verdict).
	placed        map[int64]map[string]bool
	reproduceWait time.Duration
	now           func() time.Time
	// full holds the owners a claim found at their max_running counting
	// runs this queue does not know of (leased through other replicas),
	// until when their runs are skipped (see Full).
	full    map[string]time.Time
	maxSeen int64  // the newest run ever offered
	served  uint64 // counts hand-outs: a clock for owner.served
}

// New is an empty dispatcher; now is the clock that reproduceWait is
// measured by. Every owner has share 1 and no max_running until
// SetLimits.
func New(reproduceWait time.Duration, now func() time.Time) *Dispatcher {
	return &Dispatcher{
		reproduceWait: reproduceWait, now: now, placed: map[int64]map[string]bool{},
		owners: map[string]*owner{}, queued: map[int64]*Run{}, running: map[int64]string{}, full: map[string]time.Time{},
		limits: func(string) Limits { return Limits{} },
	}
}

// SetLimits sets the rules of each owner; limits must be safe for
// concurrent use and cheap (it is called under the dispatcher's lock).
// Call it before the dispatcher is used.
func (d *Dispatcher) SetLimits(limits func(owner string) Limits) { d.limits = limits }

// ReproduceWait is how long a member of a reproduce group waits for a host
// holding no other member before any host may take it.
func (d *Dispatcher) ReproduceWait() time.Duration { return d.reproduceWait }

// fits reports whether host (with facts) may take q. Called with d.mu held.
func (d *Dispatcher) fits(q *Run, host string, facts *api.Facts) bool {
	if q.Kind == api.KindDiffoscope {
		// A comparison needs no image, only the admin's diffoscope hook.
		return facts.FreeSlots > 0 && facts.HasPostHook(api.DiffoscopeHook)
	}
	if facts.FreeSlots <= 0 || MismatchImage(q.Job, q.Image, facts) != FitOK {
		return false
	}
	if b := q.Job.ImageBuild; b != nil && b.On != "" && b.On != host {
		return false // kiln image build --on HOST
	}
	if q.Group == 0 || !d.placed[q.Group][host] {
		return true
	}
	return d.now().Sub(q.QueuedAt) >= d.reproduceWait
}

// handOut records that q goes to w's host: it counts as its owner's
// running work, and no other member of its group goes there while the
// claim is under way. Called with d.mu held.
func (d *Dispatcher) handOut(q *Run, w *Waiter) {
	d.start(q.ID, q.Owner)
	w.placed = q.Group != 0 && !d.placed[q.Group][w.host]
	if w.placed {
		d.place(q.Group, w.host)
	}
}

// start counts run id as owner's running work (once). Called with d.mu
// held.
func (d *Dispatcher) start(id int64, o string) {
	if _, ok := d.running[id]; ok {
		return
	}
	d.running[id] = o
	x := d.owner(o)
	x.running++
	d.served++
	x.served = d.served
}

// owner is o's entry, made on first use. Called with d.mu held.
func (d *Dispatcher) owner(o string) *owner {
	x := d.owners[o]
	if x == nil {
		x = &owner{}
		d.owners[o] = x
	}
	return x
}

// done stops counting run id as running work. It reports whether that
// freed a slot for the owner's queued runs, which workers waiting now
// may take (pump): they wait because no queued run fit them, so nothing
// else changed for them. Called with d.mu held.
func (d *Dispatcher) done(id int64) (freed bool) {
	o, ok := d.running[id]
	if !ok {
		return false
	}
	delete(d.running, id)
	x := d.owners[o]
	lim := d.limits(o).MaxRunning
	freed = lim > 0 && x.running == lim && len(x.runs) > 0
	x.running--
	if x.running == 0 && len(x.runs) == 0 {
		delete(d.owners, o)
	}
	return freed
}

// Unhand undoes handing q to w, after q's claim by w leased nothing: q is
// no running work of its owner, and the host holds no member of its group
// for it. Kept, a placement made for a run that was already leased
// elsewhere (a stale entry, e.g. after a leased notification overtook the
// queued one) would keep the group's other members from a host that may
// take them until reproduce_wait. A host placed before the hand-out stays
// placed.
func (d *Dispatcher) Unhand(q *Run, w *Waiter) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done(q.ID) {
		d.pump()
	}
	if !w.placed {
		return
	}
	w.placed = false
	delete(d.placed[q.Group], w.host)
}

// Running counts run id, leased to a host, as owner's running work until
// Done (idempotent): the runs leased before a restart.
func (d *Dispatcher) Running(id int64, owner string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.start(id, owner)
}

// Done ends run id's count as its owner's running work (it ended, or went
// back to the queue), so that the owner's queued runs may take the slot;
// a run not counted is no error.
func (d *Dispatcher) Done(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o, known := d.running[id]
	freed := d.done(id)
	switch {
	case len(d.full) == 0:
	case !known:
		// A run this queue never counted ended (leased through another
		// replica): it may have been a full owner's. Their next claim
		// asks the database.
		clear(d.full)
		freed = true
	case d.isFull(o):
		delete(d.full, o)
		freed = true
	}
	if freed {
		d.pump()
	}
}

// Full records that owner o is at its max_running counting runs this
// queue does not count (leased through other replicas): its runs are
// handed to no waiter until one of its runs or a run this queue does not
// count ends (Done), or for at most wait, whichever comes first. The claim decides in the database;
// this only keeps the queue from offering the owner's runs to claims
// bound to fail.
func (d *Dispatcher) Full(o string, wait time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	until := d.now().Add(wait)
	d.full[o] = until
	time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if t, ok := d.full[o]; ok && t.Equal(until) {
			delete(d.full, o)
			d.pump()
		}
	})
}

// isFull reports whether owner o is held back by Full. Called with d.mu
// held.
func (d *Dispatcher) isFull(o string) bool {
	_, ok := d.full[o]
	return ok
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
	if _, ok := d.queued[q.ID]; ok {
		return false
	}
	// A waiter waits because no queued run fits it (or its owner is at
	// its max_running), so q is the only candidate for it. A pinned run
	// goes to the longest-waiting host holding its image version, else
	// to the longest-waiting host that fits (which fetches it).
	if d.underLimit(q.Owner) {
		if i := d.waiterFor(q, false); i >= 0 {
			w := d.waiters[i]
			d.waiters = slices.Delete(d.waiters, i, i+1)
			d.handOut(q, w)
			w.ch <- q
			return true
		}
	}
	if share {
		q.Shared = true
	}
	x := d.owner(q.Owner)
	i := sort.Search(len(x.runs), func(i int) bool { return !x.runs[i].before(q) })
	x.runs = slices.Insert(x.runs, i, q)
	d.queued[q.ID] = q
	return false
}

// underLimit reports whether owner o may have one more run running.
// Called with d.mu held.
func (d *Dispatcher) underLimit(o string) bool {
	if d.isFull(o) {
		return false
	}
	lim := d.limits(o).MaxRunning
	x := d.owners[o]
	return lim <= 0 || x == nil || x.running < lim
}

// Take returns the run w's host should run next, waiting for one to be
// offered until ctx ends; nil if none came. The next run is the first,
// by priority then age, that the host can run of the owner with the least
// running work for its share (ties: the owner served longest ago, then
// the owner whose next run is older),
// skipping owners at their max_running. The run is w's to claim: if the
// claim leases nothing, give it back with Return (or Unhand).
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

// take removes and returns the run w's host should run next; if there is
// none it registers w as waiting and returns nil.
func (d *Dispatcher) take(w *Waiter) *Run {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q := d.pick(w); q != nil {
		return q
	}
	d.waiters = append(d.waiters, w)
	return nil
}

// candidate is an owner with queued runs, as pick ranks them.
type candidate struct {
	o     string
	x     *owner
	share int
}

// pick removes and returns the run w's host should run next (see Take),
// handed out to w; nil for none. Called with d.mu held.
func (d *Dispatcher) pick(w *Waiter) *Run {
	cands := make([]candidate, 0, len(d.owners))
	for o, x := range d.owners {
		if len(x.runs) == 0 {
			continue
		}
		lim := d.limits(o)
		if lim.MaxRunning > 0 && x.running >= lim.MaxRunning || d.isFull(o) {
			continue
		}
		cands = append(cands, candidate{o: o, x: x, share: max(lim.Share, 1)})
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		// running/share, compared without division.
		if c := cmp.Compare(a.x.running*b.share, b.x.running*a.share); c != 0 {
			return c
		}
		// A tie goes to the owner served longest ago: else, on a host of
		// one slot, where every owner runs nothing when the slot frees,
		// the owner with the oldest backlog would take every slot.
		if c := cmp.Compare(a.x.served, b.x.served); c != 0 {
			return c
		}
		return cmp.Compare(a.x.runs[0].ID, b.x.runs[0].ID)
	})
	for _, c := range cands {
		for i := 0; i < len(c.x.runs); i++ {
			q := c.x.runs[i]
			if !d.fits(q, w.host, w.facts) {
				continue
			}
			c.x.runs = slices.Delete(c.x.runs, i, i+1)
			delete(d.queued, q.ID)
			if !Holds(w.facts, q.Image) {
				// w's host would fetch the image: a waiting host that
				// holds it takes the run instead, and w looks further.
				if j := d.waiterFor(q, true); j >= 0 {
					h := d.waiters[j]
					d.waiters = slices.Delete(d.waiters, j, j+1)
					d.handOut(q, h)
					h.ch <- q
					if !d.underLimit(c.o) {
						break // the owner's runs wait for a free slot
					}
					i--
					continue
				}
			}
			d.handOut(q, w)
			return q
		}
	}
	return nil
}

// Holds reports whether a host with facts holds image version pin (true
// for no pin: nothing to fetch).
func Holds(f *api.Facts, pin *api.ImageVersion) bool {
	return pin == nil || slices.Contains(f.FleetImages, pin.TarDigest)
}

// waiterFor is the index in d.waiters of the waiter q should go to: the
// first holding q's image version, else (unless holdersOnly) the first
// that fits; -1 for none. Called with d.mu held.
func (d *Dispatcher) waiterFor(q *Run, holdersOnly bool) int {
	first := -1
	for i, w := range d.waiters {
		if !d.fits(q, w.host, w.facts) {
			continue
		}
		if Holds(w.facts, q.Image) {
			return i
		}
		if first < 0 {
			first = i
		}
	}
	if holdersOnly {
		return -1
	}
	return first
}

// pump hands queued runs to the waiters that can now take one (an owner
// went under its max_running). Called with d.mu held.
func (d *Dispatcher) pump() {
	for i := 0; i < len(d.waiters); {
		w := d.waiters[i]
		q := d.pick(w)
		if q == nil {
			i++
			continue
		}
		// pick may have handed runs to other waiters (holders of their
		// images), some before w: find w again.
		i = slices.Index(d.waiters, w)
		d.waiters = slices.Delete(d.waiters, i, i+1)
		w.ch <- q
	}
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
	if q, ok := d.queued[id]; ok {
		d.remove(q)
	}
}

// remove drops queued run q. Called with d.mu held.
func (d *Dispatcher) remove(q *Run) {
	delete(d.queued, q.ID)
	x := d.owners[q.Owner]
	x.runs = slices.DeleteFunc(x.runs, func(r *Run) bool { return r == q })
	if x.running == 0 && len(x.runs) == 0 {
		delete(d.owners, q.Owner)
	}
}

// LeasedElsewhere drops run id from the queue, as Remove, and counts it as
// its owner's running work until Done: another replica leased it.
func (d *Dispatcher) LeasedElsewhere(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q, ok := d.queued[id]; ok {
		d.remove(q)
		d.start(id, q.Owner)
	}
}

// Wait is why a queued run waits, as far as the queue decides it.
type Wait struct {
	// Queued: the run is in this queue (else nothing below is known).
	Queued bool
	// Running and MaxRunning are its owner's running runs and bound
	// (0: none); at the bound the owner gets no slot.
	Running, MaxRunning int
	// Ahead counts the owner's queued runs that go first: higher
	// priority, or the same and older.
	Ahead int
	// HigherPriority counts those of Ahead with a higher priority.
	HigherPriority int
}

// Why says where run id stands in the queue.
func (d *Dispatcher) Why(id int64) Wait {
	d.mu.Lock()
	defer d.mu.Unlock()
	q, ok := d.queued[id]
	if !ok {
		return Wait{}
	}
	x := d.owners[q.Owner]
	w := Wait{Queued: true, Running: x.running, MaxRunning: d.limits(q.Owner).MaxRunning}
	for _, r := range x.runs {
		if r == q {
			break
		}
		w.Ahead++
		if r.Priority > q.Priority {
			w.HigherPriority++
		}
	}
	return w
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
	return len(d.queued)
}

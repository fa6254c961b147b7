package scheduler

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// qrun is a queued run as the dispatcher sees it. The database is the
// truth; the dispatcher is an index of it rebuilt at start-up, and a claim
// re-checks the database, so a stale entry can cost a retry but never a
// double lease.
type qrun struct {
	id       int64
	job      *api.Job
	queuedAt time.Time
	group    int64  // reproduce group, 0 for none
	kind     string // api.KindJob or api.KindDiffoscope
	// shared: other replicas may hold the run in their queues (it was
	// announced, or came from them), so its lease is announced for them
	// to drop it. A run handed at once to a worker waiting here never is.
	shared bool
}

// waiter is a worker's lease long-poll.
type waiter struct {
	host  string
	facts *api.Facts
	ch    chan *qrun // buffered 1: the run handed to this waiter
	// placed: handing the run out placed host in the run's group, which
	// unhand undoes when the claim then leases nothing (set under d.mu
	// before the run is handed).
	placed bool
}

// dispatcher matches queued runs with waiting workers, oldest run first and
// longest-waiting worker first. All methods are safe for concurrent use.
type dispatcher struct {
	mu      sync.Mutex
	queue   []*qrun // sorted by id (= age)
	waiters []*waiter
	// placed holds, per undecided reproduce group, the hosts a member was
	// handed to; a host there gets no other member of the group until the
	// member has waited reproduceWait (then distinct slots of one host
	// are better than no verdict).
	placed        map[int64]map[string]bool
	reproduceWait time.Duration
	now           func() time.Time
	maxSeen       int64 // the newest run ever offered
}

// fits reports whether host (with facts) may take q. Called with d.mu held.
func (d *dispatcher) fits(q *qrun, host string, facts *api.Facts) bool {
	if q.kind == api.KindDiffoscope {
		// A comparison needs no image, only the admin's diffoscope hook.
		return facts.FreeSlots > 0 && facts.HasPostHook(api.DiffoscopeHook)
	}
	if !matches(q.job, facts) {
		return false
	}
	if q.group == 0 || !d.placed[q.group][host] {
		return true
	}
	return d.now().Sub(q.queuedAt) >= d.reproduceWait
}

// handOut records that q goes to w's host, so that no other member of
// its group goes there while the claim is under way. Called with d.mu held.
func (d *dispatcher) handOut(q *qrun, w *waiter) {
	w.placed = q.group != 0 && !d.placed[q.group][w.host]
	if w.placed {
		d.place(q.group, w.host)
	}
}

// unhand undoes handOut after q's claim by w leased nothing: the host
// holds no member for it. Kept, a placement made for a run that was
// already leased elsewhere (a stale entry, e.g. after a leased
// notification overtook the queued one) would keep the group's other
// members from a host that may take them until reproduce_wait.
func (d *dispatcher) unhand(q *qrun, w *waiter) {
	if !w.placed {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w.placed = false
	delete(d.placed[q.group], w.host)
}

// place records host as holding a member of group. Called with d.mu held.
func (d *dispatcher) place(group int64, host string) {
	if d.placed == nil {
		d.placed = map[int64]map[string]bool{}
	}
	if d.placed[group] == nil {
		d.placed[group] = map[string]bool{}
	}
	d.placed[group][host] = true
}

// placedAt restores, at start-up, a member's host.
func (d *dispatcher) placedAt(group int64, host string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.place(group, host)
}

// forget drops a decided group's placement.
func (d *dispatcher) forget(group int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.placed, group)
}

// offer hands q to the first waiter that can run it and reports true, or
// queues it.
func (d *dispatcher) offer(q *qrun) (handed bool) { return d.offerOr(q, false) }

// offerOrShare is offer for a new run that the caller announces to the
// other replicas unless it is handed: then q is queued shared (set before
// any worker here can take it).
func (d *dispatcher) offerOrShare(q *qrun) (handed bool) { return d.offerOr(q, true) }

func (d *dispatcher) offerOr(q *qrun, share bool) (handed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.maxSeen = max(d.maxSeen, q.id)
	for i, w := range d.waiters {
		if d.fits(q, w.host, w.facts) {
			d.waiters = slices.Delete(d.waiters, i, i+1)
			d.handOut(q, w)
			w.ch <- q
			return true
		}
	}
	i := sort.Search(len(d.queue), func(i int) bool { return d.queue[i].id >= q.id })
	if i < len(d.queue) && d.queue[i].id == q.id {
		return false
	}
	if share {
		q.shared = true
	}
	d.queue = slices.Insert(d.queue, i, q)
	return false
}

// take removes and returns the oldest queued run w's host can run; if
// there is none it registers w as waiting and returns nil.
func (d *dispatcher) take(w *waiter) *qrun {
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
func (d *dispatcher) unwait(w *waiter) bool {
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

func (d *dispatcher) remove(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = slices.DeleteFunc(d.queue, func(q *qrun) bool { return q.id == id })
}

// maxID is the newest run ever offered (0 for none).
func (d *dispatcher) maxID() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxSeen
}

func (d *dispatcher) depth() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue)
}

// matches reports whether a host with facts may run job now: a free slot,
// and nothing in refusal.
func matches(j *api.Job, f *api.Facts) bool {
	return f.FreeSlots > 0 && mismatch(j, f) == fitOK
}

// fit is why a host cannot run a job, slots aside (fitOK: it can). The web
// view and Run.Waiting explain a queued run's wait with it, so it is the
// same test as the dispatcher's.
type fit int

const (
	fitOK fit = iota
	fitOS
	fitArch
	fitNetwork
	fitIsolation
	fitCache // the host lacks a cache the job names
	fitImage
	fitLabel
	fitLimit // the job asks more than the host's maximum of a resource
)

func mismatch(j *api.Job, f *api.Facts) fit {
	if j.Constraints.OS != "" && j.Constraints.OS != f.OS {
		return fitOS
	}
	if j.Arch != "" && j.Arch != f.Arch && !slices.Contains(f.EmulatedArchs, j.Arch) {
		return fitArch
	}
	if !f.OffersNetwork(j.Resources.Network.Mode()) {
		return fitNetwork
	}
	if !offersIsolation(f, j.Isolation) {
		return fitIsolation
	}
	for _, c := range j.Caches {
		if !slices.Contains(f.Caches, c) {
			return fitCache
		}
	}
	name, ver, pinned := cutImage(j.Image)
	found := false
	for _, im := range f.Images {
		if im.Name != name || (j.Arch != "" && im.Arch != "" && im.Arch != j.Arch) {
			continue
		}
		if pinned && !slices.Contains(im.Versions, ver) {
			continue
		}
		if !pinned && len(im.Versions) == 0 {
			continue
		}
		found = true
		break
	}
	if !found {
		return fitImage
	}
	for k, v := range j.Constraints.Labels {
		if f.Labels[k] != v {
			return fitLabel
		}
	}
	if j.Asked().Over(f.Limits) != "" {
		return fitLimit
	}
	return fitOK
}

// refusal says, in words, why a host with facts can never run job (see
// fit); overLimit is set when a resource over the host's maximum is the
// reason, which then reads e.g. "memory=64GiB (max 16GiB)". "" means it
// can.
func refusal(j *api.Job, f *api.Facts) (reason string, overLimit bool) {
	switch mismatch(j, f) {
	case fitOK:
		return "", false
	case fitOS:
		return "os is " + f.OS, false
	case fitArch:
		return "cannot run arch " + j.Arch, false
	case fitNetwork:
		return "does not offer network " + j.Resources.Network.Mode(), false
	case fitIsolation:
		if len(f.OfferedIsolations()) == 0 {
			return "offers no isolation (neither containerd nor qemu usable)", false
		}
		return "does not offer isolation " + j.Isolation, false
	case fitCache:
		return "lacks a cache of " + strings.Join(j.Caches, ", "), false
	case fitImage:
		return "has no image " + j.Image, false
	case fitLabel:
		return "lacks the labels " + labelText(j.Constraints.Labels), false
	}
	return j.Asked().Over(f.Limits), true
}

// offersIsolation reports whether a host with facts f runs isolation
// (api.Facts.OfferedIsolations); "" is the host's default, which every
// host that runs anything runs.
func offersIsolation(f *api.Facts, isolation string) bool {
	offered := f.OfferedIsolations()
	if isolation == "" {
		return len(offered) > 0
	}
	return slices.Contains(offered, isolation)
}

func cutImage(ref string) (name, version string, pinned bool) {
	for i := 0; i < len(ref); i++ {
		if ref[i] == '@' {
			return ref[:i], ref[i+1:], true
		}
	}
	return ref, "", false
}

func newFence() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// enqueue makes a committed queued run visible to the dispatcher.
func (s *Server) enqueue(ctx context.Context, id int64, job string, rev int, grp int64, kind string, queuedAt time.Time) error {
	j, err := s.jobSpec(ctx, job, rev)
	if err != nil {
		return err
	}
	q := &qrun{id: id, job: j, queuedAt: queuedAt, group: grp, kind: kind}
	switch {
	case s.st.pg == nil:
		s.disp.offer(q)
	case !s.disp.offerOrShare(q):
		// Only a run no worker here waits for is worth the other
		// replicas' attention: offered to theirs too, it would cost a
		// failed claim on one side for nothing.
		s.pgQueued(q, job, rev)
	}
	// Only local: the other replicas' waiters on the run, if any, heard
	// of it when it changed to leave the queue (and a new run has none).
	s.notify.notify(id)
	return nil
}

// loadQueue rebuilds the dispatcher from the database at start-up.
func (s *Server) loadQueue(ctx context.Context) error {
	if err := s.loadPlacements(ctx); err != nil {
		return err
	}
	rows, err := s.st.query(ctx, `SELECT id, job, revision, queued_at, coalesce(grp, 0), kind FROM runs WHERE state = ? ORDER BY id`, api.StateQueued)
	if err != nil {
		return err
	}
	type r struct {
		id   int64
		job  string
		rev  int
		at   int64
		grp  int64
		kind string
	}
	var all []r
	for rows.Next() {
		var x r
		if err := rows.Scan(&x.id, &x.job, &x.rev, &x.at, &x.grp, &x.kind); err != nil {
			rows.Close()
			return err
		}
		all = append(all, x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, x := range all {
		if err := s.enqueue(ctx, x.id, x.job, x.rev, x.grp, x.kind, time.Unix(0, x.at)); err != nil {
			return err
		}
	}
	return nil
}

// loadPlacements restores the hosts of members of groups that still have
// queued members.
func (s *Server) loadPlacements(ctx context.Context) error {
	rows, err := s.st.query(ctx, `SELECT DISTINCT grp, host FROM runs WHERE host IS NOT NULL
		AND grp IN (SELECT grp FROM runs WHERE state = ? AND grp IS NOT NULL)`, api.StateQueued)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var grp int64
		var host string
		if err := rows.Scan(&grp, &host); err != nil {
			return err
		}
		s.disp.placedAt(grp, host)
	}
	return rows.Err()
}

// lease long-polls up to wait for a run host can run and leases it.
// It returns nil when none came in time.
func (s *Server) lease(ctx context.Context, host string, facts *api.Facts, drained bool, wait time.Duration) (*api.Assignment, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if drained {
		<-wctx.Done()
		return nil, nil
	}
	for {
		w := &waiter{host: host, facts: facts, ch: make(chan *qrun, 1)}
		q := s.disp.take(w)
		if q == nil {
			select {
			case q = <-w.ch:
			case <-wctx.Done():
			}
			if q == nil {
				if s.disp.unwait(w) {
					return nil, nil
				}
				q = <-w.ch
			}
			if ctx.Err() != nil {
				s.disp.unhand(q, w)
				s.disp.offer(q)
				return nil, ctx.Err()
			}
		}
		a, miss, err := s.claim(ctx, host, facts, q)
		if err != nil {
			s.disp.unhand(q, w)
			s.disp.offer(q)
			return nil, err
		}
		if a != nil {
			return a, nil
		}
		if miss != missPlaced {
			s.disp.unhand(q, w)
		}
		switch miss {
		case missPlaced:
			// Another replica placed a member of the group on host:
			// remember it, so that this queue offers the run elsewhere.
			s.disp.placedAt(q.group, host)
			s.disp.offer(q)
		case missBusy:
			// Another replica's claim holds the row: offer the run again
			// in a moment, in case that claim rolls back (else the next
			// claim here finds it leased and drops it).
			time.AfterFunc(busyRetry, func() { s.disp.offer(q) })
		}
	}
}

// claimMiss is why a claim leased nothing.
type claimMiss int

const (
	missGone   claimMiss = iota // the run is no longer queued
	missBusy                    // another replica is claiming it now
	missPlaced                  // a member of its group holds host already
)

// busyRetry is how long a run another replica is claiming waits before
// this replica offers it again.
const busyRetry = 20 * time.Millisecond

// claimed is what a claim read back from the leased run.
type claimed struct {
	fence                string
	expires              time.Time
	attempt, rev, member int
	grp                  int64
	variations, task     string
	owner                string
}

// claim leases q to host if it is still queued and host may take it; nil
// means it did not, and miss says why.
//
// On PostgreSQL the claim skips the run's row when another replica's
// claim holds it instead of waiting for that claim to commit, and runs
// outside a transaction (one statement): two replicas claiming at once
// never wait on each other. A member of a reproduce group is claimed in a
// transaction holding its group's row, so that two replicas cannot both
// place members on one host.
func (s *Server) claim(ctx context.Context, host string, facts *api.Facts, q *qrun) (*api.Assignment, claimMiss, error) {
	var c *claimed
	var miss claimMiss
	fn := func(tx *wtx) error {
		var err error
		c, miss, err = s.claimTx(tx, host, facts, q)
		return err
	}
	var err error
	if q.group != 0 && q.kind != api.KindDiffoscope {
		err = s.st.writeRC(ctx, fn)
	} else {
		err = s.st.writeOne(ctx, fn)
	}
	if err != nil || c == nil {
		return nil, miss, err
	}
	a, err := s.claimed(ctx, q, c)
	return a, missGone, err
}

// claimTx leases q to host in tx if it is still queued and host may take
// it; nil means it did not, and why.
func (s *Server) claimTx(tx *wtx, host string, facts *api.Facts, q *qrun) (*claimed, claimMiss, error) {
	now := s.now()
	c := &claimed{fence: newFence(), expires: now.Add(s.leaseDuration)}
	factsJSON, _ := jsonString(facts)
	// A member of an undecided reproduce group goes to a host holding no
	// other member, unless it has waited reproduce_wait; the database
	// decides, since the replicas' queues each know only their own
	// placements.
	placement, waited := "", ns(now.Add(-s.disp.reproduceWait))
	if q.group != 0 && q.kind != api.KindDiffoscope {
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM groups WHERE id = ?`+tx.forUpdate(), q.group).Scan(&one); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, missGone, err
		}
		placement = ` AND (queued_at <= ? OR NOT EXISTS (SELECT 1 FROM runs o WHERE o.grp = ? AND o.host = ? AND o.id <> ?))`
	}
	args := []any{api.StateLeased, host, c.fence, ns(c.expires), factsJSON, q.id, api.StateQueued}
	if placement != "" {
		args = append(args, waited, q.group, host, q.id)
	}
	err := tx.QueryRow(`UPDATE runs SET state = ?, host = ?, fence = ?, lease_expires = ?, host_facts = ?
		WHERE id = (SELECT id FROM runs WHERE id = ? AND state = ?`+tx.skipLocked()+`)`+placement+`
		RETURNING attempt, revision, coalesce(grp, 0), member, variations, task, owner`,
		args...).Scan(&c.attempt, &c.rev, &c.grp, &c.member, &c.variations, &c.task, &c.owner)
	if err == nil {
		return c, missGone, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, missGone, err
	}
	// Nothing leased: read why (rarely: only runs other replicas claim
	// too, or group members).
	var state string
	var placed bool
	err = tx.QueryRow(`SELECT state, EXISTS (SELECT 1 FROM runs o WHERE o.grp = r.grp AND o.host = ? AND o.id <> r.id) FROM runs r WHERE r.id = ?`,
		host, q.id).Scan(&state, &placed)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, missGone, nil
	case err != nil:
		return nil, missGone, err
	case state != api.StateQueued:
		return nil, missGone, nil
	case placement != "" && placed:
		return nil, missPlaced, nil
	}
	return nil, missBusy, nil
}

// claimed builds the assignment of a committed claim.
func (s *Server) claimed(ctx context.Context, q *qrun, c *claimed) (*api.Assignment, error) {
	s.metrics.observeDispatch(c.expires.Add(-s.leaseDuration).Sub(q.queuedAt))
	s.notify.notify(q.id)
	if s.st.pg != nil && q.shared {
		s.pgLeased(q.id)
	}
	a := &api.Assignment{
		ServerID: s.id, RunID: itoa(q.id), Job: *q.job, Revision: c.rev, Attempt: c.attempt, Fence: c.fence, Expires: c.expires, Member: c.member,
		Owner: api.CacheOwner(s.id, c.owner),
	}
	if c.grp != 0 {
		a.Group = itoa(c.grp)
		if err := json.Unmarshal([]byte(c.variations), &a.Variations); err != nil {
			return nil, fmt.Errorf("run %d variations: %w", q.id, err)
		}
	}
	if q.kind == api.KindDiffoscope {
		a.Diffoscope = &api.DiffoscopeTask{}
		if err := json.Unmarshal([]byte(c.task), a.Diffoscope); err != nil {
			return nil, fmt.Errorf("run %d task: %w", q.id, err)
		}
	}
	return a, nil
}

// heartbeat records facts and renews the leases host still holds.
func (s *Server) heartbeat(ctx context.Context, host string, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	now := s.now()
	expires := now.Add(s.leaseDuration)
	facts, _ := jsonString(req.Facts)
	resp := &api.HeartbeatResponse{Expires: expires, ServerID: s.id}
	err := s.st.writeRC(ctx, func(tx *wtx) error {
		resp.Renewed, resp.Cancel, resp.Revoked = nil, nil, nil
		var drained int
		err := tx.QueryRow(`UPDATE hosts SET facts = ?, last_seen = ? WHERE name = ? RETURNING drained`, facts, ns(now), host).Scan(&drained)
		if err != nil {
			return err
		}
		resp.Drained = drained != 0
		for _, l := range req.Leases {
			id, err := parseRunID(l.RunID)
			if err != nil {
				resp.Revoked = append(resp.Revoked, l.RunID)
				continue
			}
			var cancel int
			err = tx.QueryRow(`UPDATE runs SET lease_expires = ?, state = ?, started = coalesce(started, ?)
				WHERE id = ? AND host = ? AND fence = ? AND state IN (?, ?) RETURNING cancel_asked`,
				ns(expires), api.StateRunning, ns(now), id, host, l.Fence, api.StateLeased, api.StateRunning).Scan(&cancel)
			if errors.Is(err, sql.ErrNoRows) {
				resp.Revoked = append(resp.Revoked, l.RunID)
				continue
			}
			if err != nil {
				return err
			}
			resp.Renewed = append(resp.Renewed, l)
			if cancel != 0 {
				resp.Cancel = append(resp.Cancel, l.RunID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// expireLeases requeues runs whose lease ran out as a new attempt, or ends
// them (cancelled if a cancel was asked, lost after the last attempt).
func (s *Server) expireLeases(ctx context.Context) error {
	now := s.now()
	type requeued struct {
		id   int64
		job  string
		rev  int
		grp  int64
		kind string
	}
	var again []requeued
	var touched []int64
	err := s.st.write(ctx, func(tx *wtx) error {
		again, touched = again[:0], touched[:0]
		rows, err := tx.Query(`SELECT id, job, revision, attempt, cancel_asked, coalesce(grp, 0), kind FROM runs WHERE state IN (?, ?) AND lease_expires < ?`,
			api.StateLeased, api.StateRunning, ns(now))
		if err != nil {
			return err
		}
		type exp struct {
			id      int64
			job     string
			rev     int
			attempt int
			cancel  bool
			grp     int64
			kind    string
		}
		var all []exp
		for rows.Next() {
			var e exp
			if err := rows.Scan(&e.id, &e.job, &e.rev, &e.attempt, &e.cancel, &e.grp, &e.kind); err != nil {
				rows.Close()
				return err
			}
			all = append(all, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, e := range all {
			touched = append(touched, e.id)
			switch {
			case e.cancel:
				_, err = tx.Exec(`UPDATE runs SET state = ?, fence = NULL, lease_expires = NULL, finished = ?, error = 'lease expired after cancel' WHERE id = ?`,
					api.StateCancelled, ns(now), e.id)
			case e.attempt >= s.maxAttempts:
				_, err = tx.Exec(`UPDATE runs SET state = ?, fence = NULL, lease_expires = NULL, finished = ?, error = ? WHERE id = ?`,
					api.StateLost, ns(now), "lease expired on the last attempt", e.id)
			default:
				again = append(again, requeued{e.id, e.job, e.rev, e.grp, e.kind})
				_, err = tx.Exec(`UPDATE runs SET state = ?, attempt = attempt + 1, host = NULL, fence = NULL, lease_expires = NULL,
					queued_at = ?, log_len = 0, log_stored = 0 WHERE id = ?`, api.StateQueued, ns(now), e.id)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.metrics.leaseExpiries.Add(float64(len(touched)))
	for _, r := range again {
		if err := s.enqueue(ctx, r.id, r.job, r.rev, r.grp, r.kind, now); err != nil {
			return err
		}
	}
	for _, id := range touched {
		s.changed(id)
	}
	if err := s.settle(ctx, touched...); err != nil {
		return err
	}
	if len(touched) > 0 {
		s.log.Info("leases expired", "runs", len(touched), "requeued", len(again))
	}
	return nil
}

// complete records a run's result, exactly once: the fence must be the
// current lease's; the same fence repeating its result is answered with
// the stored run.
func (s *Server) complete(ctx context.Context, host string, id int64, req *api.ResultRequest) (*api.Run, error) {
	seen := map[string]bool{}
	for _, a := range req.Artifacts {
		if err := names.ValidRelPath(a.Path); err != nil {
			return nil, badRequest("artifact path %q: %v", a.Path, err)
		}
		if seen[a.Path] {
			return nil, badRequest("artifact path %q given twice", a.Path)
		}
		seen[a.Path] = true
		if a.Size < 0 {
			return nil, badRequest("artifact %q: negative size", a.Path)
		}
		ok, size, err := s.blobs.Size(a.SHA256)
		if err != nil {
			return nil, badRequest("artifact %q: %v", a.Path, err)
		}
		if !ok {
			return nil, badRequest("artifact %q: blob %s is not uploaded", a.Path, a.SHA256)
		}
		if size != a.Size {
			return nil, badRequest("artifact %q: size %d, but blob %s has %d bytes", a.Path, a.Size, a.SHA256, size)
		}
	}
	for _, c := range req.Checks {
		if c.Name == "" {
			return nil, badRequest("check without a name")
		}
	}
	if req.Checks == nil {
		req.Checks = []api.Check{}
	}
	checks, _ := json.Marshal(req.Checks)
	s.checkAttestation(ctx, host, req)
	now := s.now()
	// The final state; a failure is a cancellation when a cancel was
	// asked, which the statement reads from the row.
	final, ifCancelled := api.StateFailed, api.StateFailed
	switch {
	case req.TimedOut:
		final, ifCancelled = api.StateTimedOut, api.StateTimedOut
	case req.ExitCode != 0 || req.Signal != "":
		ifCancelled = api.StateCancelled
	case req.Error == "":
		final, ifCancelled = api.StateSucceeded, api.StateSucceeded
	}
	var run *api.Run
	// One conditional UPDATE records the result if the fence holds the
	// current lease: with no artifacts to insert, on PostgreSQL it is the
	// whole write, committed by itself (writeOne).
	fn := func(tx *wtx) error {
		var err error
		run, err = scanRun(tx.QueryRow(`UPDATE runs SET state = CASE WHEN cancel_asked <> 0 THEN ? ELSE ? END, finished = ?, started = coalesce(started, ?),
			exit_code = ?, signal = ?, timed_out = ?, error = ?, lease_expires = NULL, checks = ?, snapshot = ?
			WHERE id = ? AND fence = ? AND host = ? AND state IN (?, ?) RETURNING `+runCols,
			ifCancelled, final, ns(now), ns(now), req.ExitCode, req.Signal, req.TimedOut, req.Error, string(checks), req.Snapshot,
			id, req.Fence, host, api.StateLeased, api.StateRunning))
		if errors.Is(err, sql.ErrNoRows) {
			run = nil
			return nil
		}
		if err != nil {
			return err
		}
		for _, a := range req.Artifacts {
			if _, err := tx.Exec(`INSERT INTO artifacts(run, path, size, mode, sha256) VALUES (?,?,?,?,?)`, id, a.Path, a.Size, a.Mode&0o7777, a.SHA256); err != nil {
				return err
			}
		}
		return storeAttestation(tx, id, host, req)
	}
	var err error
	if len(req.Artifacts) == 0 {
		err = s.st.writeOne(ctx, fn)
	} else {
		err = s.st.writeRC(ctx, fn)
	}
	if err != nil {
		return nil, err
	}
	if run == nil {
		// Not recorded: a repeated result of this lease is answered with
		// the stored run; any other is refused.
		var state, fence, rhost string
		err := s.st.queryRow(ctx, `SELECT state, coalesce(fence, ''), coalesce(host, '') FROM runs WHERE id = ?`, id).Scan(&state, &fence, &rhost)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, notFound("no run %d", id)
		}
		if err != nil {
			return nil, err
		}
		if fence == "" || fence != req.Fence || rhost != host || !api.Terminal(state) {
			return nil, staleFence(id)
		}
		return s.getRun(ctx, id)
	}
	s.metrics.completed.Inc()
	s.changed(id)
	run.Artifacts = req.Artifacts
	if run.Group != "" {
		if err := s.settle(ctx, id); err != nil {
			// The result is stored; the verdict is decided again when the
			// group is next touched or read.
			s.log.Error("deciding group verdict", "run", id, "err", err)
		}
	}
	return run, nil
}

// checkFence verifies that host holds run id's current lease.
func (s *Server) checkFence(ctx context.Context, host string, id int64, fence string) error {
	var state, f, h string
	err := s.st.queryRow(ctx, `SELECT state, coalesce(fence, ''), coalesce(host, '') FROM runs WHERE id = ?`, id).Scan(&state, &f, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return notFound("no run %d", id)
	}
	if err != nil {
		return err
	}
	if f == "" || f != fence || h != host || api.Terminal(state) {
		return staleFence(id)
	}
	return nil
}

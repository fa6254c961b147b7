package scheduler

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/scheduler/queue"
)

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
	q := &queue.Run{ID: id, Job: j, QueuedAt: queuedAt, Group: grp, Kind: kind}
	switch {
	case s.st.pg == nil:
		s.disp.Offer(q)
	case !s.disp.OfferOrShare(q):
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
		s.disp.PlacedAt(grp, host)
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
		w := queue.NewWaiter(host, facts)
		q := s.disp.Take(wctx, w)
		if q == nil {
			return nil, nil
		}
		if ctx.Err() != nil {
			s.disp.Return(q, w)
			return nil, ctx.Err()
		}
		a, miss, err := s.claim(ctx, host, facts, q)
		if err != nil {
			s.disp.Return(q, w)
			return nil, err
		}
		if a != nil {
			return a, nil
		}
		switch miss {
		case missPlaced:
			// Another replica placed a member of the group on host:
			// remember it, so that this queue offers the run elsewhere.
			s.disp.PlacedAt(q.Group, host)
			s.disp.Offer(q)
		case missBusy:
			// Another replica's claim holds the row: offer the run again
			// in a moment, in case that claim rolls back (else the next
			// claim here finds it leased and drops it).
			s.disp.Unhand(q, w)
			time.AfterFunc(busyRetry, func() { s.disp.Offer(q) })
		default:
			s.disp.Unhand(q, w)
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
func (s *Server) claim(ctx context.Context, host string, facts *api.Facts, q *queue.Run) (*api.Assignment, claimMiss, error) {
	var c *claimed
	var miss claimMiss
	fn := func(tx *wtx) error {
		var err error
		c, miss, err = s.claimTx(tx, host, facts, q)
		return err
	}
	var err error
	if q.Group != 0 && q.Kind != api.KindDiffoscope {
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
func (s *Server) claimTx(tx *wtx, host string, facts *api.Facts, q *queue.Run) (*claimed, claimMiss, error) {
	now := s.now()
	c := &claimed{fence: newFence(), expires: now.Add(s.leaseDuration)}
	factsJSON, _ := jsonString(facts)
	// A member of an undecided reproduce group goes to a host holding no
	// other member, unless it has waited reproduce_wait; the database
	// decides, since the replicas' queues each know only their own
	// placements.
	placement, waited := "", ns(now.Add(-s.disp.ReproduceWait()))
	if q.Group != 0 && q.Kind != api.KindDiffoscope {
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM groups WHERE id = ?`+tx.forUpdate(), q.Group).Scan(&one); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, missGone, err
		}
		placement = ` AND (queued_at <= ? OR NOT EXISTS (SELECT 1 FROM runs o WHERE o.grp = ? AND o.host = ? AND o.id <> ?))`
	}
	args := []any{api.StateLeased, host, c.fence, ns(c.expires), factsJSON, q.ID, api.StateQueued}
	if placement != "" {
		args = append(args, waited, q.Group, host, q.ID)
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
		host, q.ID).Scan(&state, &placed)
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
func (s *Server) claimed(ctx context.Context, q *queue.Run, c *claimed) (*api.Assignment, error) {
	s.metrics.observeDispatch(c.expires.Add(-s.leaseDuration).Sub(q.QueuedAt))
	s.notify.notify(q.ID)
	if s.st.pg != nil && q.Shared {
		s.pgLeased(q.ID)
	}
	a := &api.Assignment{
		ServerID: s.id, RunID: itoa(q.ID), Job: *q.Job, Revision: c.rev, Attempt: c.attempt, Fence: c.fence, Expires: c.expires, Member: c.member,
		Owner: api.CacheOwner(s.id, c.owner),
	}
	if c.grp != 0 {
		a.Group = itoa(c.grp)
		if err := json.Unmarshal([]byte(c.variations), &a.Variations); err != nil {
			return nil, fmt.Errorf("run %d variations: %w", q.ID, err)
		}
	}
	if q.Kind == api.KindDiffoscope {
		a.Diffoscope = &api.DiffoscopeTask{}
		if err := json.Unmarshal([]byte(c.task), a.Diffoscope); err != nil {
			return nil, fmt.Errorf("run %d task: %w", q.ID, err)
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
		return nil
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

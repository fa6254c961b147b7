package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on a run's lease: the queue's rebuild, claim,
// renewal, expiry and result. Each picks its own transaction mode; the
// SQL of the run's path lives here only.

// queuedRun is a queued run as the database holds it.
type queuedRun struct {
	id       int64
	job      string
	rev      int
	queuedAt time.Time
	grp      int64
	kind     string
	owner    string
	priority int
	// image is the server-held image version (NAME@VERSION) the run is
	// pinned to; "" for none. imageDigest is its tar digest, where the
	// caller read it (execute's answer).
	image, imageDigest string
}

// queuedRuns lists the queued runs, oldest first.
func (s *store) queuedRuns(ctx context.Context) ([]queuedRun, error) {
	rows, err := s.query(ctx, `SELECT id, job, revision, queued_at, coalesce(grp, 0), kind, owner, priority, image FROM runs WHERE state = ? ORDER BY id`, api.StateQueued)
	return collect(rows, err, func(row rowScanner) (queuedRun, error) {
		var x queuedRun
		var at int64
		if err := row.Scan(&x.id, &x.job, &x.rev, &at, &x.grp, &x.kind, &x.owner, &x.priority, &x.image); err != nil {
			return x, err
		}
		x.queuedAt = time.Unix(0, at)
		return x, nil
	})
}

// leasedRun is a run leased to a host, and its owner.
type leasedRun struct {
	id    int64
	owner string
}

// leasedRuns lists the leased and running runs.
func (s *store) leasedRuns(ctx context.Context) ([]leasedRun, error) {
	rows, err := s.query(ctx, `SELECT id, owner FROM runs WHERE state IN (?, ?)`, api.StateLeased, api.StateRunning)
	return collect(rows, err, func(row rowScanner) (leasedRun, error) {
		var x leasedRun
		err := row.Scan(&x.id, &x.owner)
		return x, err
	})
}

// placement is a host holding a member of a reproduce group.
type placement struct {
	grp  int64
	host string
}

// placements lists the hosts of members of groups that still have queued
// members.
func (s *store) placements(ctx context.Context) ([]placement, error) {
	rows, err := s.query(ctx, `SELECT DISTINCT grp, host FROM runs WHERE host IS NOT NULL
		AND grp IN (SELECT grp FROM runs WHERE state = ? AND grp IS NOT NULL)`, api.StateQueued)
	return collect(rows, err, func(row rowScanner) (placement, error) {
		var p placement
		if err := row.Scan(&p.grp, &p.host); err != nil {
			return p, err
		}
		return p, nil
	})
}

// claimMiss is why a claim leased nothing.
type claimMiss int

const (
	missGone   claimMiss = iota // the run is no longer queued
	missBusy                    // another replica is claiming it now
	missPlaced                  // a member of its group holds host already
	missLimit                   // its owner has max_running runs leased already
)

// ownerLockSpace is the first key of the PostgreSQL transaction locks
// that serialize the claims of an owner with a max_running; the second is
// a hash of the owner key. (Two-key advisory locks never collide with the
// one-key locks of the leader and the upload sessions.)
const ownerLockSpace = 0x6b696c6e

// claimReq is a claim of run id (of reproduce group grp, 0 for none, and
// kind) for host: a lease with fence until expires. A member of a group
// goes to a host holding another member only if queued before waited.
type claimReq struct {
	id, grp     int64
	kind        string
	host, facts string
	fence       string
	leased      time.Time
	expires     time.Time
	waited      time.Time
	// owner and maxRunning: the run's owner and its max_running (0: no
	// bound). A bounded owner's claim counts, in the database, the runs
	// of the owner leased through every replica (ownerClaimTx).
	owner      string
	maxRunning int
}

// claimed is what a claim read back from the leased run.
type claimed struct {
	attempt, rev, member int
	grp                  int64
	variations, task     string
	owner                string
	env                  string // JSON: a webhook's variables (webhooks.go)
}

// claim leases run r.id to r.host if it is still queued and the host may
// take it; nil means it did not, and miss says why.
//
// On PostgreSQL the claim skips the run's row when another replica's
// claim holds it instead of waiting for that claim to commit, and runs
// outside a transaction (one statement): two replicas claiming at once
// never wait on each other. A member of a reproduce group is claimed in a
// transaction holding its group's row, so that two replicas cannot both
// place members on one host.
func (s *store) claim(ctx context.Context, r claimReq) (c *claimed, miss claimMiss, err error) {
	fn := func(tx *wtx) error {
		c, miss, err = claimTx(tx, r)
		return err
	}
	grouped := r.grp != 0 && r.kind != api.KindDiffoscope
	if grouped || r.maxRunning > 0 {
		err = s.writeRC(ctx, fn)
	} else {
		err = s.writeOne(ctx, fn)
	}
	return c, miss, err
}

func claimTx(tx *wtx, r claimReq) (*claimed, claimMiss, error) {
	limit := ""
	if r.maxRunning > 0 {
		// Each replica's queue counts only the runs it knows of; the
		// database knows them all. Claims of one bounded owner take turns
		// (a transaction lock per owner, PostgreSQL only: SQLite has one
		// writer), so that two replicas' claims cannot both see the
		// owner one under its bound and both lease. Under READ COMMITTED
		// the count below, a statement after the lock, sees what the
		// claim that held it committed.
		if tx.st.pg != nil {
			if _, err := tx.Exec(`SELECT pg_advisory_xact_lock(?, hashtext(?))`, ownerLockSpace, r.owner); err != nil {
				return nil, missGone, err
			}
		}
		limit = ` AND (SELECT count(*) FROM runs b WHERE b.owner = ? AND b.state IN (?, ?)) < ?`
	}
	// A member of an undecided reproduce group goes to a host holding no
	// other member, unless it has waited reproduce_wait; the database
	// decides, since the replicas' queues each know only their own
	// placements.
	placement := ""
	if r.grp != 0 && r.kind != api.KindDiffoscope {
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM groups WHERE id = ?`+tx.forUpdate(), r.grp).Scan(&one); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, missGone, err
		}
		placement = ` AND (queued_at <= ? OR NOT EXISTS (SELECT 1 FROM runs o WHERE o.grp = ? AND o.host = ? AND o.id <> ?))`
	}
	args := []any{api.StateLeased, r.host, r.fence, ns(r.leased), ns(r.expires), r.facts, r.id, api.StateQueued}
	if placement != "" {
		args = append(args, ns(r.waited), r.grp, r.host, r.id)
	}
	if limit != "" {
		args = append(args, r.owner, api.StateLeased, api.StateRunning, r.maxRunning)
	}
	c := &claimed{}
	err := tx.QueryRow(`UPDATE runs SET state = ?, host = ?, fence = ?, leased = ?, lease_expires = ?, host_facts = ?
		WHERE id = (SELECT id FROM runs WHERE id = ? AND state = ?`+tx.skipLocked()+`)`+placement+limit+`
		RETURNING attempt, revision, coalesce(grp, 0), member, variations, task, owner, env`,
		args...).Scan(&c.attempt, &c.rev, &c.grp, &c.member, &c.variations, &c.task, &c.owner, &c.env)
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
	var running int
	err = tx.QueryRow(`SELECT state, EXISTS (SELECT 1 FROM runs o WHERE o.grp = r.grp AND o.host = ? AND o.id <> r.id),
		(SELECT count(*) FROM runs b WHERE b.owner = r.owner AND b.state IN (?, ?)) FROM runs r WHERE r.id = ?`,
		r.host, api.StateLeased, api.StateRunning, r.id).Scan(&state, &placed, &running)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, missGone, nil
	case err != nil:
		return nil, missGone, err
	case state != api.StateQueued:
		return nil, missGone, nil
	case placement != "" && placed:
		return nil, missPlaced, nil
	case limit != "" && running >= r.maxRunning:
		return nil, missLimit, nil
	}
	return nil, missBusy, nil
}

// heartbeat records host's facts (JSON) at now and renews until expires
// the leases of req it still holds, filling resp's Drained, Renewed,
// Cancel and Revoked.
func (s *store) heartbeat(ctx context.Context, host, facts string, req *api.HeartbeatRequest, now, expires time.Time, resp *api.HeartbeatResponse) error {
	return s.writeRC(ctx, func(tx *wtx) error {
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
}

// expiredLease is a run whose lease ran out.
type expiredLease struct {
	queuedRun
	attempt int
	cancel  bool
}

// expireLeases ends, at now, the leases that ran out: a run is requeued as
// a new attempt (listed in again, queued at now), or ended (cancelled if a
// cancel was asked, lost after attempt maxAttempts). touched lists every
// run changed.
func (s *store) expireLeases(ctx context.Context, now time.Time, maxAttempts int) (again []queuedRun, touched []int64, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		again, touched = again[:0], touched[:0]
		all, err := expiredLeases(tx, now)
		if err != nil {
			return err
		}
		for _, e := range all {
			touched = append(touched, e.id)
			switch {
			case e.cancel:
				_, err = tx.Exec(`UPDATE runs SET state = ?, fence = NULL, lease_expires = NULL, finished = ?, error = 'lease expired after cancel' WHERE id = ?`,
					api.StateCancelled, ns(now), e.id)
			case e.attempt >= maxAttempts:
				_, err = tx.Exec(`UPDATE runs SET state = ?, fence = NULL, lease_expires = NULL, finished = ?, error = ? WHERE id = ?`,
					api.StateLost, ns(now), "lease expired on the last attempt", e.id)
			default:
				e.queuedAt = now
				again = append(again, e.queuedRun)
				_, err = tx.Exec(`UPDATE runs SET state = ?, attempt = attempt + 1, host = NULL, fence = NULL, leased = NULL, lease_expires = NULL,
					queued_at = ?, log_len = 0, log_stored = 0, phase = '' WHERE id = ?`, api.StateQueued, ns(now), e.id)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	return again, touched, err
}

func expiredLeases(tx *wtx, now time.Time) ([]expiredLease, error) {
	rows, err := tx.Query(`SELECT id, job, revision, attempt, cancel_asked, coalesce(grp, 0), kind, owner, priority, image FROM runs WHERE state IN (?, ?) AND lease_expires < ?`,
		api.StateLeased, api.StateRunning, ns(now))
	return collect(rows, err, func(row rowScanner) (expiredLease, error) {
		var e expiredLease
		if err := row.Scan(&e.id, &e.job, &e.rev, &e.attempt, &e.cancel, &e.grp, &e.kind, &e.owner, &e.priority, &e.image); err != nil {
			return e, err
		}
		return e, nil
	})
}

// result is a run's result as recordResult stores it: state final, or
// ifCancelled when a cancel was asked (the statement reads that from the
// row); checks is JSON.
type result struct {
	req                *api.ResultRequest
	final, ifCancelled string
	checks             string
	now                time.Time
}

// recordResult stores r as run id's result if host holds its lease with
// r.req.Fence, with its artifacts; nil means the lease is not held (the
// caller reads the run's lease to tell a repeat from a stale fence).
func (s *store) recordResult(ctx context.Context, host string, id int64, r result) (*api.Run, error) {
	req := r.req
	var run *api.Run
	fn := func(tx *wtx) error {
		var err error
		run, err = scanRun(tx.QueryRow(`UPDATE runs SET state = CASE WHEN cancel_asked <> 0 THEN ? ELSE ? END, finished = ?, started = coalesce(started, ?),
			exit_code = ?, signal = ?, timed_out = ?, error = ?, lease_expires = NULL, checks = ?, snapshot = ?
			WHERE id = ? AND fence = ? AND host = ? AND state IN (?, ?) RETURNING `+runCols,
			r.ifCancelled, r.final, ns(r.now), ns(r.now), req.ExitCode, req.Signal, req.TimedOut, req.Error, r.checks, req.Snapshot,
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
	// With no artifacts or attestation to insert, the conditional UPDATE
	// is the whole write: on PostgreSQL it commits by itself (writeOne).
	var err error
	if len(req.Artifacts) == 0 && len(req.Attestation) == 0 {
		err = s.writeOne(ctx, fn)
	} else {
		err = s.writeRC(ctx, fn)
	}
	return run, err
}

// runLease is who holds a run's lease: its state, fence and host ("" for
// none).
type runLease struct{ state, fence, host string }

// holds reports whether host holds the lease with fence.
func (l runLease) holds(host, fence string) bool {
	return l.fence != "" && l.fence == fence && l.host == host
}

// lease reads run id's lease (a not-found error for no such run).
func (s *store) lease(ctx context.Context, id int64) (runLease, error) {
	var l runLease
	err := s.queryRow(ctx, `SELECT state, coalesce(fence, ''), coalesce(host, '') FROM runs WHERE id = ?`, id).Scan(&l.state, &l.fence, &l.host)
	if errors.Is(err, sql.ErrNoRows) {
		return l, notFound("no run %d", id)
	}
	return l, err
}

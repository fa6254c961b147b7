package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kiln-build/kiln/api"
)

// With PostgreSQL several servers (replicas) share the queue, so no
// process may hold it in memory: a lease claims a run in the database
// (FOR UPDATE SKIP LOCKED), wake-ups cross replicas with LISTEN/NOTIFY,
// and the periodic sweeps run on the one replica holding the leader lock.

const (
	// chanQueue carries "a run was queued"; chanRun carries a run id whose
	// state or console changed (long-polls of observers).
	chanQueue = "kiln_queue"
	chanRun   = "kiln_run"
	// leaderLock is the advisory lock the leader replica holds.
	leaderLock = 0x6b696c6e + 1
	// pgPoll is how often a waiting lease looks at the queue without a
	// notification, and how often a replica tries to become the leader:
	// notifications sent while a listener reconnects are lost.
	pgPoll = time.Second
	// claimScan bounds the queued runs one claim looks at.
	claimScan = 64
)

// queueWake is the notifier key of "a run was queued" (run ids start at 1).
const queueWake = 0

// pgNotify tells every replica (this one included, through its listener)
// that run id changed, or with id queueWake that a run was queued.
func (s *Server) pgNotify(ctx context.Context, id int64) {
	ch, payload := chanRun, strconv.FormatInt(id, 10)
	if id == queueWake {
		ch, payload = chanQueue, ""
	}
	if _, err := s.st.rd.ExecContext(ctx, `SELECT pg_notify($1, $2)`, ch, payload); err != nil && ctx.Err() == nil {
		// Waiters poll: a lost notification delays, never loses.
		s.log.Debug("notify", "err", err)
	}
}

// listen relays the notifications of other replicas to this one's
// waiters until ctx ends, reconnecting when the connection drops.
func (s *Server) listen(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("database notifications lost; reconnecting", "err", err)
		// What was notified meanwhile is lost: wake every waiter to look.
		s.notify.notifyAll()
		select {
		case <-ctx.Done():
		case <-time.After(pgPoll):
		}
	}
}

func (s *Server) listenOnce(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.Store.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, ch := range []string{chanQueue, chanRun} {
		if _, err := conn.Exec(ctx, "LISTEN "+ch); err != nil {
			return err
		}
	}
	s.notify.notifyAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == chanQueue {
			s.notify.notify(queueWake)
			continue
		}
		if id, err := strconv.ParseInt(n.Payload, 10, 64); err == nil {
			s.notify.notify(id)
		}
	}
}

// lead holds the leader lock while it can: a session advisory lock on a
// connection of its own, so that it is released the moment the leader's
// process or connection dies, and another replica takes it at its next
// try (within pgPoll).
func (s *Server) lead(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.leadOnce(ctx)
		s.leader.Store(false)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Warn("leader lock lost", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(pgPoll):
		}
	}
}

func (s *Server) leadOnce(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.Store.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, leaderLock).Scan(&got); err != nil {
			return err
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pgPoll):
		}
	}
	s.log.Info("this replica leads: lease expiry and schedules run here")
	s.leader.Store(true)
	t := time.NewTicker(pgPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// The lock lives as long as the connection: check it is alive.
			pctx, cancel := context.WithTimeout(ctx, pgPoll)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		}
	}
}

// leading reports whether this server runs the periodic sweeps: always
// with SQLite, with PostgreSQL while it holds the leader lock.
func (s *Server) leading() bool { return s.st.pg == nil || s.leader.Load() }

// leaderFlag is the replica's leader state.
type leaderFlag = atomic.Bool

// pgLease long-polls up to wait for a run host can run, claiming it in
// the database.
func (s *Server) pgLease(ctx context.Context, host string, facts *api.Facts, wait time.Duration) (*api.Assignment, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		woken := s.notify.wait(queueWake)
		a, err := s.pgClaim(ctx, host, facts)
		if err != nil || a != nil {
			return a, err
		}
		select {
		case <-woken:
		case <-time.After(pgPoll):
		case <-wctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pgClaim leases the oldest queued run host can take. The candidates are
// read without locks; each one that fits is then locked on its own, FOR
// UPDATE SKIP LOCKED, so that a claim never waits on a run another
// replica's claim is taking, and leased only if still queued. READ
// COMMITTED suffices: the row lock and the state check make the claim
// atomic, and SERIALIZABLE would only turn the claims' overlapping reads
// of the queue into retries.
func (s *Server) pgClaim(ctx context.Context, host string, facts *api.Facts) (*api.Assignment, error) {
	cands, err := s.pgCandidates(ctx)
	if err != nil {
		return nil, err
	}
	for _, x := range cands {
		if !s.disp.fitsPlaced(x, facts, false) {
			continue // not even on a host without another member
		}
		var c *claimed
		err := s.st.pg.writeIso(ctx, s.st, sql.LevelReadCommitted, func(tx *wtx) error {
			c = nil
			var id int64
			err := tx.QueryRow(`SELECT id FROM runs WHERE id = ? AND state = ? FOR UPDATE SKIP LOCKED`, x.id, api.StateQueued).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				return nil // taken meanwhile, or being taken
			}
			if err != nil {
				return err
			}
			placed := false
			if x.group != 0 && x.kind != api.KindDiffoscope {
				var n int
				if err := tx.QueryRow(`SELECT count(*) FROM runs WHERE grp = ? AND host = ? AND id <> ?`, x.group, host, x.id).Scan(&n); err != nil {
					return err
				}
				placed = n > 0
			}
			if !s.disp.fitsPlaced(x, facts, placed) {
				return nil
			}
			c, err = s.claimTx(tx, host, facts, x)
			return err
		})
		if err != nil {
			return nil, err
		}
		if c != nil {
			return s.claimed(ctx, x, c)
		}
	}
	return nil, nil
}

// pgCandidates reads the oldest queued runs with their jobs.
func (s *Server) pgCandidates(ctx context.Context) ([]*qrun, error) {
	rows, err := s.st.query(ctx, `SELECT r.id, r.queued_at, coalesce(r.grp, 0), r.kind, r.job, r.revision, v.spec
		FROM runs r JOIN job_revisions v ON v.name = r.job AND v.revision = r.revision
		WHERE r.state = ? ORDER BY r.id LIMIT ?`, api.StateQueued, claimScan)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cands []*qrun
	for rows.Next() {
		var x qrun
		var at int64
		var job, spec string
		var rev int
		if err := rows.Scan(&x.id, &at, &x.group, &x.kind, &job, &rev, &spec); err != nil {
			return nil, err
		}
		x.queuedAt = time.Unix(0, at)
		if x.job, err = s.jobSpecFrom(job, rev, spec); err != nil {
			return nil, err
		}
		cands = append(cands, &x)
	}
	return cands, rows.Err()
}

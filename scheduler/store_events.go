package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on outgoing events (events.go): the outbox of
// deliveries and the mark of the finished runs already looked at.

// endedRun is a run that ended, as the event pass reads it.
type endedRun struct {
	id       int64
	job      string
	rev      int
	state    string
	finished int64
	grp      int64
	verdict  sql.NullString // the group's, once decided
	firstID  int64          // the group's first member (the group's event is keyed by it)
}

// eventMark reads how far the event pass has looked (Unix ns of
// finished); found is false before the first pass.
func (s *store) eventMark(ctx context.Context) (mark int64, found bool, err error) {
	err = s.queryRow(ctx, `SELECT mark FROM notify_mark WHERE id = 1`).Scan(&mark)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return mark, err == nil, err
}

// endedRuns lists up to limit job runs that finished in (after, upTo],
// in the order they finished.
func (s *store) endedRuns(ctx context.Context, after, upTo int64, limit int) ([]endedRun, error) {
	rows, err := s.query(ctx, `SELECT r.id, r.job, r.revision, r.state, r.finished, coalesce(r.grp, 0), g.verdict,
		coalesce((SELECT min(o.id) FROM runs o WHERE o.grp = r.grp), 0)
		FROM runs r LEFT JOIN groups g ON g.id = r.grp
		WHERE r.finished > ? AND r.finished <= ? AND r.kind <> ? ORDER BY r.finished, r.id LIMIT ?`,
		after, upTo, api.KindDiffoscope, limit)
	return collect(rows, err, func(row rowScanner) (endedRun, error) {
		var f endedRun
		err := row.Scan(&f.id, &f.job, &f.rev, &f.state, &f.finished, &f.grp, &f.verdict, &f.firstID)
		return f, err
	})
}

// outboxRow is a row of notify_outbox.
type outboxRow struct {
	id                          int64
	run                         int64
	url, event, secretRef, body string
	tries                       int
	created, deadline           int64
}

// queueEvents stores rows (a row already stored for its run, url and
// event is left alone) and moves the mark from oldMark to newMark, in one
// write; first makes the mark. A mark another replica moved meanwhile is
// left alone (its pass stored the same rows).
func (s *store) queueEvents(ctx context.Context, rows []outboxRow, oldMark, newMark int64, first bool, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		for _, r := range rows {
			if _, err := tx.Exec(`INSERT INTO notify_outbox(run, url, event, secret_ref, payload, state, next_try, deadline, created)
				VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING`,
				r.run, r.url, r.event, r.secretRef, r.body, api.NotifyPending, ns(now), r.deadline, r.created); err != nil {
				return err
			}
		}
		if first {
			_, err := tx.Exec(`INSERT INTO notify_mark(id, mark) VALUES (1, ?) ON CONFLICT DO NOTHING`, newMark)
			return err
		}
		_, err := tx.Exec(`UPDATE notify_mark SET mark = ? WHERE id = 1 AND mark = ?`, newMark, oldMark)
		return err
	})
}

// claimEvents leases up to limit due pending deliveries to owner until
// leaseUntil: a delivery is sent by one replica at a time (a row another
// replica's claim holds is skipped on PostgreSQL; the lease keeps it
// until the sender reports or the lease runs out).
func (s *store) claimEvents(ctx context.Context, owner string, now time.Time, leaseUntil time.Time, limit int) (out []outboxRow, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		out = out[:0]
		rows, err := tx.Query(`UPDATE notify_outbox SET lease_owner = ?, lease_until = ?
			WHERE id IN (SELECT id FROM notify_outbox WHERE state = ? AND next_try <= ? AND lease_until < ? ORDER BY next_try, id LIMIT ?`+tx.skipLocked()+`)
			RETURNING id, run, url, event, secret_ref, payload, tries, created, deadline`,
			owner, ns(leaseUntil), api.NotifyPending, ns(now), ns(now), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r outboxRow
			if err := rows.Scan(&r.id, &r.run, &r.url, &r.event, &r.secretRef, &r.body, &r.tries, &r.created, &r.deadline); err != nil {
				return err
			}
			out = append(out, r)
		}
		return rows.Err()
	})
	return out, err
}

// eventTried records a try of delivery id by owner: state (pending to
// try again at next, delivered, failed), the tries so far and the last
// error. A row whose lease another sender took since is left alone.
func (s *store) eventTried(ctx context.Context, id int64, owner, state string, tries int, lastErr string, next, now time.Time) error {
	var done any
	if state != api.NotifyPending {
		done = ns(now)
	}
	return s.writeOne(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE notify_outbox SET state = ?, tries = ?, last_error = ?, next_try = ?, done = ?, lease_owner = '', lease_until = 0
			WHERE id = ? AND lease_owner = ?`, state, tries, lastErr, ns(next), done, id, owner)
		return err
	})
}

// runEvents lists the deliveries of run's events.
func (s *store) runEvents(ctx context.Context, run int64) ([]api.Notification, error) {
	rows, err := s.query(ctx, `SELECT url, event, state, tries, last_error, next_try, done FROM notify_outbox WHERE run = ? ORDER BY id`, run)
	return collect(rows, err, func(row rowScanner) (api.Notification, error) {
		var n api.Notification
		var next int64
		var done sql.NullInt64
		if err := row.Scan(&n.URL, &n.Event, &n.State, &n.Tries, &n.LastError, &next, &done); err != nil {
			return n, err
		}
		if n.State == api.NotifyPending {
			n.NextTry = time.Unix(0, next).UTC()
		}
		if done.Valid {
			n.Done = time.Unix(0, done.Int64).UTC()
		}
		return n, nil
	})
}

// addEvents stores rows in the outbox outside a pass (publish.done); a
// row already stored for its run, url and event is left alone.
func (s *store) addEvents(ctx context.Context, rows []outboxRow, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		for _, r := range rows {
			if _, err := tx.Exec(`INSERT INTO notify_outbox(run, url, event, secret_ref, payload, state, next_try, deadline, created)
				VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING`,
				r.run, r.url, r.event, r.secretRef, r.body, api.NotifyPending, ns(now), r.deadline, r.created); err != nil {
				return err
			}
		}
		return nil
	})
}

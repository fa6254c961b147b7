package scheduler

import (
	"context"
	"errors"
	"time"
)

// The store's operation on schedules.

// firedRun is a run a schedule queued.
type firedRun struct {
	id       int64
	job      string
	rev      int
	grp      int64
	owner    string
	priority int
	image    string // the pinned image version (NAME@VERSION; "": none)
}

// fireSkip is a due job that fireDue could not fire as asked: what
// happened, and why.
type fireSkip struct {
	job, what string
	err       error
}

// fireDue fires, in one write, up to limit jobs whose next fire time is
// at or before now: it moves each one's next fire time past now and queues
// its runs (queueRuns). A job whose stored schedule no longer parses has it
// cleared, and one that cannot be queued is skipped; both are listed in
// skipped. nDue is how many jobs were due; o carries each owner's
// max_queued and the check of its storage quota.
func (s *store) fireDue(ctx context.Context, now time.Time, limit int, o queueOpts) (fired []firedRun, skipped []fireSkip, nDue int, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		fired, skipped = fired[:0], skipped[:0]
		rows, err := tx.Query(`SELECT name, schedule FROM jobs WHERE next_fire IS NOT NULL AND next_fire <= ? ORDER BY next_fire LIMIT ?`, ns(now), limit)
		if err != nil {
			return err
		}
		type due struct{ name, spec string }
		var all []due
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.name, &d.spec); err != nil {
				rows.Close()
				return err
			}
			all = append(all, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		nDue = len(all)
		for _, d := range all {
			next, err := nextFire(d.spec, now)
			if err != nil {
				// A schedule stored by an older, laxer version: stop it
				// rather than fail every tick.
				skipped = append(skipped, fireSkip{d.name, "bad stored schedule; clearing it", err})
				next = nil
			}
			if _, err := tx.Exec(`UPDATE jobs SET next_fire = ? WHERE name = ?`, next, d.name); err != nil {
				return err
			}
			q, err := queueRuns(tx, d.name, "schedule", now, o)
			var ae *apiError
			if errors.As(err, &ae) {
				// This job cannot be queued (e.g. stored with a reproduce
				// since refused, its owner has max_queued runs queued
				// or is at its storage quota); the others still fire.
				skipped = append(skipped, fireSkip{d.name, "schedule not fired", err})
				continue
			}
			if err != nil {
				return err
			}
			for _, id := range q.ids {
				fired = append(fired, firedRun{id, d.name, q.rev, q.grp, q.owner, q.priority, q.image})
			}
		}
		return nil
	})
	return fired, skipped, nDue, err
}

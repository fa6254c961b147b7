package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// parseSchedule accepts a 5-field cron expression, @hourly, @daily,
// @weekly (and the other robfig descriptors) or "@every DURATION".
func parseSchedule(spec string) (cron.Schedule, error) {
	if strings.HasPrefix(strings.TrimSpace(spec), "TZ=") || strings.HasPrefix(strings.TrimSpace(spec), "CRON_TZ=") {
		return nil, fmt.Errorf("schedule %q: time zones are not supported (schedules are UTC)", spec)
	}
	sc, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %v (want 5 cron fields, @hourly, @daily, @weekly or @every 10m)", spec, err)
	}
	if d, ok := strings.CutPrefix(strings.TrimSpace(spec), "@every "); ok {
		// robfig rounds short delays up to 1s silently; say so instead.
		if v, err := time.ParseDuration(strings.TrimSpace(d)); err != nil || v < time.Second {
			return nil, fmt.Errorf("schedule %q: @every needs a duration of at least 1s", spec)
		}
	}
	return sc, nil
}

// nextFire is the first fire time after now, as stored (nil: none).
func nextFire(spec string, now time.Time) (any, error) {
	if spec == "" {
		return nil, nil
	}
	sc, err := parseSchedule(spec)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return ns(sc.Next(now.UTC())), nil
}

// fireBatch bounds the jobs one write fires (and so the runs it inserts:
// at most fireBatch groups of maxGroupSize), so that many due schedules
// never make one long write transaction that holds up every other write.
const fireBatch = 64

// fireSchedules queues one run for every job whose next fire time has
// passed, and moves its next fire time past now: however many periods a
// downtime missed, the job fires once.
func (s *Server) fireSchedules(ctx context.Context) error {
	now := s.now()
	for {
		n, err := s.fireSome(ctx, now)
		if err != nil || n < fireBatch {
			return err
		}
	}
}

// fireSome fires up to fireBatch due jobs in one write and returns how
// many were due.
func (s *Server) fireSome(ctx context.Context, now time.Time) (int, error) {
	type fired struct {
		id  int64
		job string
		rev int
		grp int64
	}
	var out []fired
	var nDue int
	err := s.st.write(ctx, func(tx *wtx) error {
		out = out[:0]
		rows, err := tx.Query(`SELECT name, schedule FROM jobs WHERE next_fire IS NOT NULL AND next_fire <= ? ORDER BY next_fire LIMIT ?`, ns(now), fireBatch)
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
				s.log.Warn("bad stored schedule; clearing it", "job", d.name, "err", err)
				next = nil
			}
			if _, err := tx.Exec(`UPDATE jobs SET next_fire = ? WHERE name = ?`, next, d.name); err != nil {
				return err
			}
			ids, rev, grp, err := queueRuns(tx, d.name, "schedule", now, 0)
			var ae *apiError
			if errors.As(err, &ae) {
				// This job cannot be queued (e.g. stored with a reproduce
				// since refused); the others still fire.
				s.log.Warn("schedule not fired", "job", d.name, "err", err)
				continue
			}
			if err != nil {
				return err
			}
			for _, id := range ids {
				out = append(out, fired{id, d.name, rev, grp})
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, f := range out {
		s.log.Info("schedule fired", "job", f.job, "run", f.id)
		if err := s.enqueue(ctx, f.id, f.job, f.rev, f.grp, "", now); err != nil {
			return 0, err
		}
	}
	return nDue, nil
}

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
	out, skipped, nDue, err := s.st.fireDue(ctx, now, fireBatch, queueOpts{maxQueued: s.maxQueued,
		admit: func(owner string) error { return s.checkQuota(ctx, owner, 0) }})
	for _, sk := range skipped {
		if ne := (*needsError)(nil); errors.As(sk.err, &ne) {
			// Its next fire time moved on with the others'.
			s.fireGraph(ctx, sk.job)
			continue
		}
		s.log.Warn(sk.what, "job", sk.job, "err", sk.err)
	}
	if err != nil {
		return 0, err
	}
	for _, f := range out {
		s.log.Info("schedule fired", "job", f.job, "run", f.id)
		if err := s.enqueue(ctx, queuedRun{id: f.id, job: f.job, rev: f.rev, queuedAt: now, grp: f.grp, owner: f.owner, priority: f.priority, image: f.image}); err != nil {
			return 0, err
		}
	}
	return nDue, nil
}

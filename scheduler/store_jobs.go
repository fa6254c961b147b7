package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on jobs and their revisions, and the writes that
// queue runs of a job.

const jobCols = `j.name, j.revision, j.schedule, j.next_fire, j.created, j.updated, j.owner, r.spec`

func scanJob(sc interface{ Scan(...any) error }) (*api.JobInfo, error) {
	var ji api.JobInfo
	var name, spec string
	var next, created, updated sql.NullInt64
	if err := sc.Scan(&name, &ji.Revision, &ji.Schedule, &next, &created, &updated, &ji.Owner, &spec); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(spec), &ji.Job); err != nil {
		return nil, err
	}
	ji.Job.Schedule = ji.Schedule
	ji.NextFire, ji.Created, ji.Updated = fromNS(next), fromNS(created), fromNS(updated)
	return &ji, nil
}

// newJob is a job to store as the first revision of a new incarnation of
// its name: spec is its JSON, next its first fire time (nextFire).
type newJob struct {
	name, spec, schedule, owner string
	next                        any
	now                         time.Time
	triggers                    []string // the job's on list (job_triggers)
}

// addJob stores j unless a job of its name exists (a conflict error).
func (s *store) addJob(ctx context.Context, j newJob) error {
	return s.write(ctx, func(tx *wtx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM jobs WHERE name = ?`, j.name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "job %q already exists (use job modify)", j.name)
		}
		var rev int
		if err := tx.QueryRow(`SELECT coalesce(max(revision), 0) + 1 FROM job_revisions WHERE name = ?`, j.name).Scan(&rev); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO job_revisions(name, revision, spec, created) VALUES (?,?,?,?)`, j.name, rev, j.spec, ns(j.now)); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO jobs(name, revision, schedule, next_fire, created, updated, owner, first_revision) VALUES (?,?,?,?,?,?,?,?)`,
			j.name, rev, j.schedule, j.next, ns(j.now), ns(j.now), j.owner, rev); err != nil {
			return err
		}
		return setTriggers(tx, j.name, j.triggers)
	})
}

// addRevision stores j as the next revision of its job if p sees the job.
// A schedule in j (with its next fire time) replaces the job's if it
// differs; none keeps it.
func (s *store) addRevision(ctx context.Context, p *principal, j newJob) error {
	return s.write(ctx, func(tx *wtx) error {
		var rev int
		var sched, owner string
		err := tx.QueryRow(`SELECT revision, schedule, owner FROM jobs WHERE name = ?`, j.name).Scan(&rev, &sched, &owner)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
			return notFound("no job %q", j.name)
		}
		if err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT max(revision) + 1 FROM job_revisions WHERE name = ?`, j.name).Scan(&rev); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO job_revisions(name, revision, spec, created) VALUES (?,?,?,?)`, j.name, rev, j.spec, ns(j.now)); err != nil {
			return err
		}
		if err := setTriggers(tx, j.name, j.triggers); err != nil {
			return err
		}
		if j.schedule != "" && j.schedule != sched {
			_, err = tx.Exec(`UPDATE jobs SET revision = ?, schedule = ?, next_fire = ?, updated = ? WHERE name = ?`, rev, j.schedule, j.next, ns(j.now), j.name)
			return err
		}
		_, err = tx.Exec(`UPDATE jobs SET revision = ?, updated = ? WHERE name = ?`, rev, ns(j.now), j.name)
		return err
	})
}

// jobVisible answers 404, as for a job that does not exist, when p may
// not see job name.
func jobVisible(tx *wtx, p *principal, name string) error {
	var owner string
	err := tx.QueryRow(`SELECT owner FROM jobs WHERE name = ?`, name).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
		return notFound("no job %q", name)
	}
	return err
}

// removeJob deletes job name if p sees it and cancels its queued runs at
// now, returning them.
//
// On PostgreSQL it runs READ COMMITTED: its DELETE waits for the executes
// holding the job's row (insertRun, queueRuns), and its UPDATE then sees
// the runs they queued.
func (s *store) removeJob(ctx context.Context, p *principal, name string, now time.Time) (cancelled []int64, err error) {
	err = s.writeRC(ctx, func(tx *wtx) error {
		cancelled = cancelled[:0]
		if err := jobVisible(tx, p, name); err != nil {
			return err
		}
		res, err := tx.Exec(`DELETE FROM jobs WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("no job %q", name)
		}
		if err := setTriggers(tx, name, nil); err != nil {
			return err
		}
		rows, err := tx.Query(`UPDATE runs SET state = ?, finished = ?, error = 'job removed' WHERE job = ? AND state IN (?, ?) RETURNING id`,
			api.StateCancelled, ns(now), name, api.StateQueued, api.StateDepWait)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			cancelled = append(cancelled, id)
		}
		return rows.Err()
	})
	return cancelled, err
}

// job reads job name (a not-found error for none), whoever owns it.
func (s *store) job(ctx context.Context, name string) (*api.JobInfo, error) {
	row := s.queryRow(ctx, `SELECT `+jobCols+` FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`, name)
	ji, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("no job %q", name)
	}
	return ji, err
}

// jobs lists the jobs of owner ("": all) by name.
func (s *store) jobs(ctx context.Context, owner string) ([]api.JobInfo, error) {
	rows, err := s.query(ctx, `SELECT `+jobCols+` FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision
		WHERE ? = '' OR j.owner = ? ORDER BY j.name`, owner, owner)
	return collect(rows, err, func(row rowScanner) (api.JobInfo, error) {
		ji, err := scanJob(row)
		if err != nil {
			return api.JobInfo{}, err
		}
		return *ji, nil
	})
}

// setSchedule sets job name's schedule to spec ("" for none) firing next,
// if p sees the job.
func (s *store) setSchedule(ctx context.Context, p *principal, name, spec string, next any, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		if err := jobVisible(tx, p, name); err != nil {
			return err
		}
		res, err := tx.Exec(`UPDATE jobs SET schedule = ?, next_fire = ?, updated = ? WHERE name = ?`, spec, next, ns(now), name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("no job %q", name)
		}
		return nil
	})
}

// executeRuns queues, if p sees job name, the runs of one execute of it
// (queueRuns).
func (s *store) executeRuns(ctx context.Context, p *principal, name string, now time.Time, o queueOpts) (q queued, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		if err := jobVisible(tx, p, name); err != nil {
			return err
		}
		var err error
		q, err = queueRuns(tx, name, "execute", now, o)
		return err
	})
	return q, err
}

// jobRevision is a job's current revision as stored: its number, owner
// and spec (JSON); ok is false when there is no such job.
func (s *store) jobRevision(ctx context.Context, name string) (rev int, owner, spec string, ok bool, err error) {
	err = s.queryRow(ctx, `SELECT j.revision, j.owner, r.spec FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`,
		name).Scan(&rev, &owner, &spec)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", "", false, nil
	}
	return rev, owner, spec, err == nil, err
}

// executeOne queues one run of job name, with priority, with one
// statement, committed by itself on PostgreSQL, if the job is still at
// revision rev of owner and owner has fewer than maxQueued (0: any number)
// runs queued; ok is false when it is not. It keeps the job's row from
// being removed until it commits (removeJob then sees the run and cancels
// it).
//
// The run is pinned as queueRuns pins it, to the server-held version of
// the job's image (for its arch) if there is one: image and digest are
// returned.
func (s *store) executeOne(ctx context.Context, name string, rev int, owner, key string, priority, maxQueued int, jobImage, jobArch string, now time.Time) (id int64, image, digest string, ok bool, err error) {
	pin, pinnable := pinArgs(jobImage, jobArch)
	if !pinnable {
		pin = []any{"", 0, 0, "", ""} // selects nothing: image_versions has no name ""
	}
	args := append([]any{api.StateQueued, ns(now), ns(now), priority, key}, pin...)
	args = append(args, pin...)
	args = append(args, name, rev, owner, maxQueued, owner, api.StateQueued, maxQueued)
	err = s.writeOne(ctx, func(tx *wtx) error {
		return tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, owner, priority, run_key, image, image_digest)
			SELECT name, revision, ?, 1, 'execute', ?, ?, owner, ?, ?,
			coalesce((SELECT p.name || '@' || CAST(p.version AS TEXT) FROM (`+pinFor+`) p), ''),
			coalesce((SELECT p.tar_digest FROM (`+pinFor+`) p), '')
			FROM jobs WHERE name = ? AND revision = ? AND owner = ?
			AND (? = 0 OR (SELECT count(*) FROM runs WHERE owner = ? AND state = ?) < ?)`+tx.keyShare()+` RETURNING id, image, image_digest`,
			args...).Scan(&id, &image, &digest)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", "", false, nil
	}
	return id, image, digest, err == nil, err
}

// queueOpts are the choices of one execute or schedule fire.
type queueOpts struct {
	n        int  // runs: a group of n >= 2, or one (0: the job's own reproduce)
	priority *int // replaces the job's priority when set
	// maxQueued is an owner's max_queued (0: no bound).
	maxQueued func(owner string) int
	// admit, when set, may refuse the owner's runs with an *apiError
	// before any is queued (a schedule's firing checks the owner's
	// storage quota with it, as an execute does before its write).
	admit func(owner string) error
}

// queued is what queueRuns queued: the run IDs, the revision, the group
// (0: none), the runs' owner and priority, and the server-held image
// version they are pinned to ("": none).
type queued struct {
	ids         []int64
	rev         int
	grp         int64
	owner       string
	priority    int
	image       string
	imageDigest string
}

// queueRuns inserts, inside tx, one queued run of job's current revision,
// or a group of runs (queueOpts.n), unless that would queue more runs of
// the job's owner than its max_queued (429, CodeQueueFull).
func queueRuns(tx *wtx, job, trigger string, now time.Time, o queueOpts) (q queued, err error) {
	var spec string
	err = tx.QueryRow(`SELECT j.revision, r.spec, j.owner FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`+tx.keyShare(), job).Scan(&q.rev, &spec, &q.owner)
	if errors.Is(err, sql.ErrNoRows) {
		return q, notFound("no job %q", job)
	}
	if err != nil {
		return q, err
	}
	var gj groupJob
	if err := json.Unmarshal([]byte(spec), &gj); err != nil {
		return q, fmt.Errorf("job %s revision %d: %w", job, q.rev, err)
	}
	if len(gj.Needs) > 0 {
		return q, errHasNeeds(job)
	}
	n := o.n
	if n == 0 {
		n = gj.Reproduce
	}
	if n > maxGroupSize {
		// Only a job stored before reproduce was bounded can get here.
		return q, badRequest("job %s: reproduce %d exceeds %d (modify the job)", job, n, maxGroupSize)
	}
	q.priority = gj.Priority
	if o.priority != nil {
		q.priority = *o.priority
	}
	// Every run of one execute (a group's members) is pinned to the same
	// server-held image version, which its requeued attempts keep.
	if q.image, q.imageDigest, err = pinRun(tx, gj.Image, gj.Arch); err != nil {
		return q, err
	}
	if o.admit != nil {
		if err := o.admit(q.owner); err != nil {
			return q, err
		}
	}
	if limit := o.maxQueued(q.owner); limit > 0 {
		var have int
		if err := tx.QueryRow(`SELECT count(*) FROM runs WHERE owner = ? AND state = ?`, q.owner, api.StateQueued).Scan(&have); err != nil {
			return q, err
		}
		if have+max(n, 1) > limit {
			return q, queueFull(q.owner, have, limit)
		}
	}
	if n < 2 {
		var id int64
		err = tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, owner, priority, image, image_digest, run_key) VALUES (?,?,?,1,?,?,?,?,?,?,?,?) RETURNING id`,
			job, q.rev, api.StateQueued, trigger, ns(now), ns(now), q.owner, q.priority, q.image, q.imageDigest, gj.key(job, q.rev, q.imageDigest)).Scan(&id)
		q.ids = []int64{id}
		return q, err
	}
	epoch := now.Unix()
	if err := tx.QueryRow(`INSERT INTO groups(job, revision, size, created, source_date_epoch, owner) VALUES (?,?,?,?,?,?) RETURNING id`,
		job, q.rev, n, ns(now), epoch, q.owner).Scan(&q.grp); err != nil {
		return q, err
	}
	for i := 0; i < n; i++ {
		var id int64
		if err := tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, grp, member, owner, priority, image, image_digest, run_key) VALUES (?,?,?,1,?,?,?,?,?,?,?,?,?,?) RETURNING id`,
			job, q.rev, api.StateQueued, trigger, ns(now), ns(now), q.grp, i, q.owner, q.priority, q.image, q.imageDigest, gj.key(job, q.rev, q.imageDigest)).Scan(&id); err != nil {
			return q, err
		}
		v := memberVariations(i, epoch, gj)
		v[api.VariationHostname] = itoa(id)
		if !slices.Contains(gj.varied(), "hostname") {
			v[api.VariationHostname] = "kiln-group-" + itoa(q.grp)
		}
		b, _ := json.Marshal(v)
		if _, err := tx.Exec(`UPDATE runs SET variations = ? WHERE id = ?`, string(b), id); err != nil {
			return q, err
		}
		q.ids = append(q.ids, id)
	}
	return q, nil
}

// revisionSpec reads revision rev of job name's spec (JSON).
func (s *store) revisionSpec(ctx context.Context, name string, rev int) (string, error) {
	var spec string
	err := s.queryRow(ctx, `SELECT spec FROM job_revisions WHERE name = ? AND revision = ?`, name, rev).Scan(&spec)
	return spec, err
}

// storedRevision is a revision of a job as stored; spec is JSON.
type storedRevision struct {
	rev     int
	created time.Time
	spec    string
}

// revisions lists the last 100 revisions of the current incarnation of
// job name, newest first, if owner still owns it.
func (s *store) revisions(ctx context.Context, name, owner string) ([]storedRevision, error) {
	rows, err := s.query(ctx, `SELECT v.revision, v.created, v.spec FROM job_revisions v
		JOIN jobs j ON j.name = v.name AND v.revision >= j.first_revision
		WHERE v.name = ? AND j.owner = ? ORDER BY v.revision DESC LIMIT 100`, name, owner)
	return collect(rows, err, func(row rowScanner) (storedRevision, error) {
		var r storedRevision
		var created sql.NullInt64
		if err := row.Scan(&r.rev, &created, &r.spec); err != nil {
			return r, err
		}
		r.created = fromNS(created)
		return r, nil
	})
}

// jobStats counts the ended runs of owner's current incarnation of job
// name, and those that succeeded. (CASE, not sum(state = ?): PostgreSQL
// has no sum of booleans.)
func (s *store) jobStats(ctx context.Context, name, owner string) (ended, succeeded int, err error) {
	err = s.queryRow(ctx, `SELECT count(*), coalesce(sum(CASE WHEN state = ? THEN 1 ELSE 0 END), 0) FROM runs WHERE job = ? AND owner = ? AND `+incarnation+` AND state IN (?,?,?,?,?)`,
		api.StateSucceeded, name, owner, api.StateSucceeded, api.StateFailed, api.StateTimedOut, api.StateCancelled, api.StateLost).Scan(&ended, &succeeded)
	return ended, succeeded, err
}

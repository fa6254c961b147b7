package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
)

func ns(t time.Time) int64 { return t.UnixNano() }

func fromNS(v sql.NullInt64) time.Time {
	if !v.Valid || v.Int64 == 0 {
		return time.Time{}
	}
	return time.Unix(0, v.Int64).UTC()
}

// checkJob validates a job that arrived as JSON and checks that its inputs
// are stored, so a run never references a blob the server lacks, and that
// p may read them: naming a blob as an input must not be a way to reach
// another owner's artifact.
func (s *Server) checkJob(ctx context.Context, p *principal, j *api.Job) error {
	if err := j.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if j.Schedule != "" {
		if _, err := parseSchedule(j.Schedule); err != nil {
			return badRequest("%v", err)
		}
	}
	for _, in := range j.Inputs {
		ok, err := s.canReadBlob(ctx, p, in.SHA256)
		if err != nil {
			return err
		}
		if !ok || !s.blobs.Has(in.SHA256) {
			return badRequest("input %q: blob %s is not uploaded", in.Path, in.SHA256)
		}
	}
	return nil
}

// addJob stores a new job at the next revision its name has seen.
// The job belongs to p's owner (see clientOwner); job names are one
// namespace across owners. A name once removed may be added again, by any
// owner: that is a new incarnation of the name, which starts at
// first_revision, and what is looked up by name (revisions, runs, stats)
// is only ever that incarnation's (see incarnation).
func (s *Server) addJob(ctx context.Context, p *principal, j *api.Job) (*api.JobInfo, error) {
	if err := s.checkJob(ctx, p, j); err != nil {
		return nil, err
	}
	spec, _ := json.Marshal(j)
	now := s.now()
	err := s.st.write(ctx, func(tx *wtx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM jobs WHERE name = ?`, j.Name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "job %q already exists (use job modify)", j.Name)
		}
		var rev int
		if err := tx.QueryRow(`SELECT coalesce(max(revision), 0) + 1 FROM job_revisions WHERE name = ?`, j.Name).Scan(&rev); err != nil {
			return err
		}
		next, err := nextFire(j.Schedule, now)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO job_revisions(name, revision, spec, created) VALUES (?,?,?,?)`, j.Name, rev, string(spec), ns(now)); err != nil {
			return err
		}
		_, err = tx.Exec(`INSERT INTO jobs(name, revision, schedule, next_fire, created, updated, owner, first_revision) VALUES (?,?,?,?,?,?,?,?)`,
			j.Name, rev, j.Schedule, next, ns(now), ns(now), p.owner(), rev)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.getJob(ctx, p, j.Name)
}

// modifyJob stores j as a new revision of name. A schedule in the file
// replaces the job's schedule; a file without one keeps it (clear it with
// setSchedule), so a schedule set from the CLI survives a modify.
func (s *Server) modifyJob(ctx context.Context, p *principal, name string, j *api.Job) (*api.JobInfo, error) {
	if j.Name == "" {
		j.Name = name
	}
	if j.Name != name {
		return nil, badRequest("job file names %q, not %q (a job cannot be renamed)", j.Name, name)
	}
	// Another owner's job is not there for p, whatever p sends.
	if _, err := s.getJob(ctx, p, name); err != nil {
		return nil, err
	}
	if err := s.checkJob(ctx, p, j); err != nil {
		return nil, err
	}
	spec, _ := json.Marshal(j)
	now := s.now()
	err := s.st.write(ctx, func(tx *wtx) error {
		var rev int
		var sched, owner string
		err := tx.QueryRow(`SELECT revision, schedule, owner FROM jobs WHERE name = ?`, name).Scan(&rev, &sched, &owner)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
			return notFound("no job %q", name)
		}
		if err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT max(revision) + 1 FROM job_revisions WHERE name = ?`, name).Scan(&rev); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO job_revisions(name, revision, spec, created) VALUES (?,?,?,?)`, name, rev, string(spec), ns(now)); err != nil {
			return err
		}
		if j.Schedule != "" && j.Schedule != sched {
			next, err := nextFire(j.Schedule, now)
			if err != nil {
				return err
			}
			_, err = tx.Exec(`UPDATE jobs SET revision = ?, schedule = ?, next_fire = ?, updated = ? WHERE name = ?`, rev, j.Schedule, next, ns(now), name)
			return err
		}
		_, err = tx.Exec(`UPDATE jobs SET revision = ?, updated = ? WHERE name = ?`, rev, ns(now), name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.getJob(ctx, p, name)
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

// removeJob deletes the job and cancels its queued runs; runs that are
// leased finish (their revision stays stored).
//
// On PostgreSQL it runs READ COMMITTED: its DELETE waits for the executes
// holding the job's row (executeOne, queueRuns), and its UPDATE then sees
// the runs they queued.
func (s *Server) removeJob(ctx context.Context, p *principal, name string) error {
	var cancelled []int64
	now := s.now()
	err := s.st.writeRC(ctx, func(tx *wtx) error {
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
		rows, err := tx.Query(`UPDATE runs SET state = ?, finished = ?, error = 'job removed' WHERE job = ? AND state = ? RETURNING id`,
			api.StateCancelled, ns(now), name, api.StateQueued)
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
	if err != nil {
		return err
	}
	for _, id := range cancelled {
		s.disp.Remove(id)
		s.changed(id)
	}
	return s.settle(ctx, cancelled...)
}

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

func (s *Server) getJob(ctx context.Context, p *principal, name string) (*api.JobInfo, error) {
	row := s.st.queryRow(ctx, `SELECT `+jobCols+` FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`, name)
	ji, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(ji.Owner)) {
		return nil, notFound("no job %q", name)
	}
	return ji, err
}

// listJobs lists the jobs p sees.
func (s *Server) listJobs(ctx context.Context, p *principal) ([]api.JobInfo, error) {
	owner := p.ownerFilter()
	rows, err := s.st.query(ctx, `SELECT `+jobCols+` FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision
		WHERE ? = '' OR j.owner = ? ORDER BY j.name`, owner, owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.JobInfo{}
	for rows.Next() {
		ji, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *ji)
	}
	return out, rows.Err()
}

// setSchedule sets (spec != "") or clears the job's schedule; the next fire
// time is computed from now.
func (s *Server) setSchedule(ctx context.Context, p *principal, name, spec string) (*api.JobInfo, error) {
	now := s.now()
	next, err := nextFire(spec, now)
	if err != nil {
		return nil, err
	}
	err = s.st.write(ctx, func(tx *wtx) error {
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
	if err != nil {
		return nil, err
	}
	return s.getJob(ctx, p, name)
}

// executeJob queues a run now, or a reproduce group of n runs (n == 0:
// the job's own reproduce); the answer is the (first) run.
func (s *Server) executeJob(ctx context.Context, p *principal, name string, n int) (*api.Run, error) {
	now := s.now()
	if n == 0 && s.st.pg != nil {
		id, rev, err := s.executeOne(ctx, p, name, now)
		if err != nil {
			return nil, err
		}
		if id != 0 {
			if err := s.enqueue(ctx, id, name, rev, 0, api.KindJob, now); err != nil {
				return nil, err
			}
			return &api.Run{ID: itoa(id), Job: name, Revision: rev, State: api.StateQueued, Attempt: 1, Trigger: "execute", Created: now.UTC()}, nil
		}
	}
	var ids []int64
	var rev int
	var grp int64
	err := s.st.write(ctx, func(tx *wtx) error {
		if err := jobVisible(tx, p, name); err != nil {
			return err
		}
		var err error
		ids, rev, grp, err = queueRuns(tx, name, "execute", now, n)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if err := s.enqueue(ctx, id, name, rev, grp, api.KindJob, now); err != nil {
			return nil, err
		}
	}
	if grp != 0 {
		return s.getRun(ctx, ids[0])
	}
	return &api.Run{ID: itoa(ids[0]), Job: name, Revision: rev, State: api.StateQueued, Attempt: 1, Trigger: "execute", Created: now.UTC()}, nil
}

// jobHead is what executing a job needs of its current revision.
type jobHead struct {
	rev       int
	owner     string
	reproduce int
}

// executeOne queues one run of job name on PostgreSQL with one statement,
// committed by itself, when p may see the job and its current revision
// makes no reproduce group; id 0 means the caller must take the general
// path (which also answers a missing job). The revision, owner and
// reproduce come from a cache; the INSERT re-checks the revision and
// owner in the database, so a stale entry costs a miss, never a wrong
// run, and it keeps the job's row from being removed until it commits
// (removeJob then sees the run and cancels it).
func (s *Server) executeOne(ctx context.Context, p *principal, name string, now time.Time) (id int64, rev int, err error) {
	v, ok := s.heads.Load(name)
	if !ok {
		var h jobHead
		var spec string
		err := s.st.queryRow(ctx, `SELECT j.revision, j.owner, r.spec FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`,
			name).Scan(&h.rev, &h.owner, &spec)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, 0, nil
		}
		if err != nil {
			return 0, 0, err
		}
		j, err := s.jobSpecFrom(name, h.rev, spec)
		if err != nil {
			return 0, 0, err
		}
		h.reproduce = j.Reproduce
		v, _ = s.heads.LoadOrStore(name, h)
	}
	h := v.(jobHead)
	if !p.sees(h.owner) || h.reproduce >= 2 {
		return 0, 0, nil
	}
	err = s.st.writeOne(ctx, func(tx *wtx) error {
		return tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, owner)
			SELECT name, revision, ?, 1, 'execute', ?, ?, owner FROM jobs WHERE name = ? AND revision = ? AND owner = ?`+tx.keyShare()+` RETURNING id`,
			api.StateQueued, ns(now), ns(now), name, h.rev, h.owner).Scan(&id)
	})
	if errors.Is(err, sql.ErrNoRows) {
		s.heads.CompareAndDelete(name, h)
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	return id, h.rev, nil
}

package scheduler

import (
	"context"
	"encoding/json"
	"time"

	"github.com/kiln-build/kiln/api"
)

// checkJob validates a job that arrived as JSON and checks that its inputs
// are stored, so a run never references a blob the server lacks, and that
// p may read them: naming a blob as an input must not be a way to reach
// another owner's artifact.
func (s *Server) checkJob(ctx context.Context, p *principal, j *api.Job) error {
	if err := j.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if err := s.checkPriority(p, j.Priority); err != nil {
		return err
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
	// checkJob parsed the schedule.
	next, err := nextFire(j.Schedule, now)
	if err != nil {
		return nil, err
	}
	err = s.st.addJob(ctx, newJob{name: j.Name, spec: string(spec), schedule: j.Schedule, owner: p.owner(), next: next, now: now})
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
	next, err := nextFire(j.Schedule, now)
	if err != nil {
		return nil, err
	}
	if err := s.st.addRevision(ctx, p, newJob{name: name, spec: string(spec), schedule: j.Schedule, next: next, now: now}); err != nil {
		return nil, err
	}
	return s.getJob(ctx, p, name)
}

// removeJob deletes the job and cancels its queued runs; runs that are
// leased finish (their revision stays stored).
func (s *Server) removeJob(ctx context.Context, p *principal, name string) error {
	cancelled, err := s.st.removeJob(ctx, p, name, s.now())
	if err != nil {
		return err
	}
	for _, id := range cancelled {
		s.disp.Remove(id)
		s.changed(id)
	}
	return s.settle(ctx, cancelled...)
}

func (s *Server) getJob(ctx context.Context, p *principal, name string) (*api.JobInfo, error) {
	ji, err := s.st.job(ctx, name)
	if err == nil && !p.sees(ji.Owner) {
		return nil, notFound("no job %q", name)
	}
	return ji, err
}

// listJobs lists the jobs p sees.
func (s *Server) listJobs(ctx context.Context, p *principal) ([]api.JobInfo, error) {
	return s.st.jobs(ctx, p.ownerFilter())
}

// setSchedule sets (spec != "") or clears the job's schedule; the next fire
// time is computed from now.
func (s *Server) setSchedule(ctx context.Context, p *principal, name, spec string) (*api.JobInfo, error) {
	now := s.now()
	next, err := nextFire(spec, now)
	if err != nil {
		return nil, err
	}
	if err := s.st.setSchedule(ctx, p, name, spec, next, now); err != nil {
		return nil, err
	}
	return s.getJob(ctx, p, name)
}

// executeJob queues a run now, or a reproduce group of n runs (n == 0:
// the job's own reproduce), at priority (nil: the job's); the answer is
// the (first) run. Over its owner's max_queued it queues nothing (429).
func (s *Server) executeJob(ctx context.Context, p *principal, name string, n int, priority *int) (*api.Run, error) {
	if priority != nil {
		if err := s.checkPriority(p, *priority); err != nil {
			return nil, err
		}
	}
	if err := s.checkExecuteQuota(ctx, p, name); err != nil {
		return nil, err
	}
	now := s.now()
	if n == 0 && s.st.postgres() {
		x, err := s.executeOne(ctx, p, name, priority, now)
		if err != nil {
			return nil, err
		}
		if x.id != 0 {
			if err := s.enqueue(ctx, x); err != nil {
				return nil, err
			}
			return &api.Run{ID: itoa(x.id), Job: name, Revision: x.rev, State: api.StateQueued, Attempt: 1, Trigger: "execute", Created: now.UTC(), Priority: x.priority}, nil
		}
	}
	q, err := s.st.executeRuns(ctx, p, name, now, queueOpts{n: n, priority: priority, maxQueued: s.maxQueued})
	if err != nil {
		return nil, err
	}
	for _, id := range q.ids {
		x := queuedRun{id: id, job: name, rev: q.rev, queuedAt: now, grp: q.grp, kind: api.KindJob, owner: q.owner, priority: q.priority}
		if err := s.enqueue(ctx, x); err != nil {
			return nil, err
		}
	}
	if q.grp != 0 {
		return s.getRun(ctx, q.ids[0])
	}
	return &api.Run{ID: itoa(q.ids[0]), Job: name, Revision: q.rev, State: api.StateQueued, Attempt: 1, Trigger: "execute", Created: now.UTC(), Priority: q.priority}, nil
}

// jobHead is what executing a job needs of its current revision.
type jobHead struct {
	rev       int
	owner     string
	reproduce int
	priority  int
}

// executeOne queues one run of job name on PostgreSQL with one statement,
// committed by itself, when p may see the job and its current revision
// makes no reproduce group and its owner is under max_queued; id 0 means
// the caller must take the general path (which also answers a missing
// job, or a full queue). The revision, owner, reproduce and priority come
// from a cache; the store re-checks the revision and owner in the
// database, so a stale entry costs a miss, never a wrong run.
func (s *Server) executeOne(ctx context.Context, p *principal, name string, priority *int, now time.Time) (x queuedRun, err error) {
	v, ok := s.heads.Load(name)
	if !ok {
		rev, owner, spec, found, err := s.st.jobRevision(ctx, name)
		if !found {
			return x, err
		}
		h := jobHead{rev: rev, owner: owner}
		j, err := s.jobSpecFrom(name, h.rev, spec)
		if err != nil {
			return x, err
		}
		h.reproduce, h.priority = j.Reproduce, j.Priority
		v, _ = s.heads.LoadOrStore(name, h)
	}
	h := v.(jobHead)
	if !p.sees(h.owner) || h.reproduce >= 2 {
		return x, nil
	}
	x = queuedRun{job: name, rev: h.rev, queuedAt: now, kind: api.KindJob, owner: h.owner, priority: h.priority}
	if priority != nil {
		x.priority = *priority
	}
	id, ok, err := s.st.executeOne(ctx, name, h.rev, h.owner, x.priority, s.maxQueued(h.owner), now)
	if err != nil {
		return queuedRun{}, err
	}
	if !ok {
		// A stale entry, or a full queue: the general path tells.
		s.heads.CompareAndDelete(name, h)
		return queuedRun{}, nil
	}
	x.id = id
	return x, nil
}

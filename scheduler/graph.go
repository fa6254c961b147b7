package scheduler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// Jobs that build on jobs (issue 30; docs/job-file.md, "Needs" and
// "Triggers"). Executing a job with [[needs]] executes its graph: each
// needed job is satisfied by its latest succeeded run with the key the
// job would have now, or else by a new run queued first; the job's own
// run waits (dep-wait) until every run it needs has succeeded, and ends
// skipped if one does not. The graph's state is in the database (run_needs
// and the runs' states): a server that restarts settles what ended while
// it was down (resumeNeeds).

// graphNode is a job of a graph, at its current revision, with the key a
// run of it would have now.
type graphNode struct {
	name  string
	rev   int
	owner string
	job   *api.Job
	key   string
}

// needsError: the job has needs, so it is executed through its graph
// (executeGraph), never queued alone. It wraps an apiError so that the
// schedule's fire, which skips a job it cannot queue, skips it too and
// fires it through the graph after.
type needsError struct{ *apiError }

func (e *needsError) Unwrap() error { return e.apiError }

func errHasNeeds(job string) *needsError {
	return &needsError{badRequest("job %q has needs: it runs through its graph", job)}
}

// loadGraph reads job name and every job it needs, directly or not, at
// their current revisions, each after the jobs it needs (name last), with
// their keys. p must see each of them. override, when set, stands for
// the job of its name instead of the stored one (a job being added or
// modified). A missing job, a cycle or more than api.MaxGraph jobs is
// refused with a message that names it.
func (s *Server) loadGraph(ctx context.Context, p *principal, name string, override *api.Job) ([]*graphNode, error) {
	var order []*graphNode
	done := map[string]*graphNode{}
	var path []string
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		if i := slices.Index(path, name); i >= 0 {
			return badRequest("needs cycle: %s", strings.Join(append(slices.Clone(path[i:]), name), " -> "))
		}
		if done[name] != nil {
			return nil
		}
		if len(done) >= api.MaxGraph {
			return badRequest("job %q: its graph has more than %d jobs", path[0], api.MaxGraph)
		}
		n := &graphNode{name: name}
		if override != nil && name == override.Name {
			n.job, n.owner = override, p.owner()
		} else {
			h, err := s.graphHead(ctx, name, override == nil)
			if err != nil {
				return err
			}
			if h.job == nil || !p.sees(h.owner) {
				if neededBy != "" {
					return badRequest("job %q needs %q: no job %q", neededBy, name, name)
				}
				return notFound("no job %q", name)
			}
			n.job, n.rev, n.owner = h.job, h.rev, h.owner
		}
		path = append(path, name)
		for _, need := range n.job.Needs {
			if err := visit(need.Job, name); err != nil {
				return err
			}
		}
		path = path[:len(path)-1]
		needKeys := make(map[string]string, len(n.job.Needs))
		for _, need := range n.job.Needs {
			needKeys[need.Job] = done[need.Job].key
		}
		n.key = runKey(n.name, n.rev, n.job, imageDigest(n.job), needKeys)
		done[name] = n
		order = append(order, n)
		return nil
	}
	if err := visit(name, ""); err != nil {
		return nil, err
	}
	return order, nil
}

// graphHead is a job's current revision as a graph walk reads it; job
// nil: no such job.
type graphHead struct {
	rev   int
	owner string
	job   *api.Job
}

// graphHead reads job name's current revision, from graphHeads when
// cached is set. A stale entry (the job changed through another replica)
// costs the graph's write a conflict, after which executeGraph drops the
// graph's entries and walks it again from the database.
func (s *Server) graphHead(ctx context.Context, name string, cached bool) (graphHead, error) {
	if v, ok := s.graphHeads.Load(name); ok && cached {
		return v.(graphHead), nil
	}
	rev, owner, spec, found, err := s.st.jobRevision(ctx, name)
	if err != nil || !found {
		return graphHead{}, err
	}
	h := graphHead{rev: rev, owner: owner}
	if h.job, err = s.jobSpecFrom(name, rev, spec); err != nil {
		return graphHead{}, err
	}
	s.graphHeads.Store(name, h)
	return h, nil
}

// imageDigest is the image digest loadGraph's keys are made with: none.
// They are provisional (the walk and the cycle check need no more); the
// graph's write pins each run to its image's server-held version, if any
// (pinRun), and makes the keys again with that version's digest.
func imageDigest(*api.Job) string { return "" }

// runKey is what a run of revision rev of job name builds: its revision,
// its inputs' digests, its image (and image version digest when known)
// and, for each job it needs, the globs it takes and that job's key.
// Two runs with one key had the same inputs, so a succeeded one stands
// for the other.
func runKey(name string, rev int, j *api.Job, imageDigest string, needKeys map[string]string) string {
	h := sha256.New()
	fmt.Fprintf(h, "kiln run key 1\x00job %s\x00revision %d\x00image %s\x00image digest %s\x00", name, rev, j.Image, imageDigest)
	inputs := slices.SortedFunc(slices.Values(j.Inputs), func(a, b api.Input) int { return strings.Compare(a.Path, b.Path) })
	for _, in := range inputs {
		fmt.Fprintf(h, "input %q %s\x00", in.Path, in.SHA256)
	}
	needs := slices.SortedFunc(slices.Values(j.Needs), func(a, b api.Need) int { return strings.Compare(a.Job, b.Job) })
	for _, n := range needs {
		fmt.Fprintf(h, "need %q %q %s\x00", n.Job, n.Artifacts, needKeys[n.Job])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkGraph refuses a job (being added or modified by p) whose needs
// name a job p cannot see or make a cycle, or whose success triggers name
// a job p cannot see or make a cycle of triggers (a run for ever).
func (s *Server) checkGraph(ctx context.Context, p *principal, j *api.Job) error {
	if len(j.Needs) > 0 {
		if _, err := s.loadGraph(ctx, p, j.Name, j); err != nil {
			return err
		}
	}
	// A trigger edge goes from a job to the job whose success executes
	// it; a cycle of them would execute its jobs for ever.
	var path []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if i := slices.Index(path, name); i >= 0 {
			return badRequest("trigger cycle: %s", strings.Join(append(slices.Clone(path[i:]), name), " (on success of) "))
		}
		if seen[name] {
			return nil
		}
		seen[name] = true
		on := j.On
		if name != j.Name {
			ji, err := s.st.job(ctx, name)
			if err != nil || !p.sees(ji.Owner) {
				return badRequest("job %q: on success:%s: no job %q", path[len(path)-1], name, name)
			}
			on = ji.Job.On
		}
		path = append(path, name)
		for _, o := range on {
			if kind, x, _ := api.Trigger(o); kind == api.TriggerSuccess {
				if err := visit(x); err != nil {
					return err
				}
			}
		}
		path = path[:len(path)-1]
		return nil
	}
	return visit(j.Name)
}

// triggerEvents are the events stored for j (job_triggers).
func triggerEvents(j *api.Job) []string { return j.On }

// executeGraph executes job name through its graph (see the top of this
// file), with trigger as the root run's trigger_kind; with reuse, a
// succeeded run of the key the root would have answers instead (Reused).
//
// cause, for a trigger, is what executed it ("run:812"): a second execute
// of name with the same cause is errTriggerFired (store_triggers.go).
func (s *Server) executeGraph(ctx context.Context, p *principal, name string, req api.ExecuteRequest, trigger, cause string) (*api.Run, error) {
	if req.Priority != nil {
		if err := s.checkPriority(p, *req.Priority); err != nil {
			return nil, err
		}
	}
	for try := 0; ; try++ {
		run, err := s.executeGraphOnce(ctx, p, name, req, trigger, cause)
		var ae *apiError
		if try > 0 || !errors.As(err, &ae) || ae.code != codeGraphChanged {
			return run, err
		}
	}
}

// executeGraphOnce is executeGraph on the graph as cached; a job that
// changed meanwhile is an error with code codeGraphChanged, and its graph's
// entries are dropped from the cache.
func (s *Server) executeGraphOnce(ctx context.Context, p *principal, name string, req api.ExecuteRequest, trigger, cause string) (*api.Run, error) {
	nodes, err := s.loadGraph(ctx, p, name, nil)
	if err != nil {
		return nil, err
	}
	root := nodes[len(nodes)-1]
	if req.Reproduce != 0 || root.job.Reproduce != 0 {
		if len(nodes) > 1 || req.Reuse {
			return nil, badRequest("job %q: a reproduce group is never reused nor run with needs", name)
		}
		return s.executeJob(ctx, p, name, req.Reproduce, req.Priority)
	}
	plan := graphPlan{trigger: trigger, cause: cause, reuse: req.Reuse, now: s.now(), maxQueued: s.maxQueued}
	for _, n := range nodes {
		r := graphRun{job: n.name, rev: n.rev, owner: n.owner, priority: n.job.Priority, spec: n.job, root: n == root}
		if req.Priority != nil {
			r.priority = *req.Priority
		}
		for _, need := range n.job.Needs {
			r.needs = append(r.needs, need.Job)
		}
		plan.runs = append(plan.runs, r)
	}
	if len(nodes) == 1 {
		s.graphJobs.Delete(name)
	}
	g, err := s.st.queueGraph(ctx, plan)
	if err != nil {
		for _, n := range nodes {
			s.graphHeads.Delete(n.name)
		}
		return nil, err
	}
	for _, x := range g.ready {
		if err := s.enqueue(ctx, x); err != nil {
			return nil, err
		}
	}
	var run *api.Run
	if g.reused {
		if run, err = s.graphRun(ctx, g.root); err != nil {
			return nil, err
		}
		run.Reused = true
	} else {
		// A new run: the answer is made from what was queued, as
		// executeJob's is.
		run = &api.Run{ID: itoa(g.root), Job: name, Revision: root.rev, State: g.state, Attempt: 1, Trigger: trigger,
			Created: plan.now.UTC(), Priority: plan.runs[len(plan.runs)-1].priority, Kind: api.KindJob, Key: g.key, Needs: g.needs}
		if run.State == api.StateDepWait {
			run.Waiting = depWaiting(run.Needs)
		}
	}
	if g.reused {
		s.log.Info("execute reused a run", "job", name, "run", g.root, "key", g.key)
	} else if g.fresh > 1 {
		s.log.Info("graph queued", "job", name, "run", g.root, "runs", g.fresh)
	}
	return run, nil
}

// graphRun is the answer of an execute through the graph: the run with
// its key and needs, and its artifacts when it is an old one; not why a
// queued run waits for a host (getRun), which costs a look at every host.
func (s *Server) graphRun(ctx context.Context, id int64) (*api.Run, error) {
	r, err := s.st.run(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.Key, r.Needs, err = s.st.runGraph(ctx, id); err != nil {
		return nil, err
	}
	switch {
	case r.State == api.StateDepWait:
		r.Waiting = depWaiting(r.Needs)
	case api.Terminal(r.State):
		r.Artifacts, err = s.st.artifacts(ctx, id)
	}
	return r, err
}

// execute is POST /v1/jobs/{name}/runs: a job with needs, or an execute
// with reuse, goes through executeGraph; any other through executeJob.
//
// Whether a job has needs is remembered (graphJobs) so that its executes
// do not try executeJob first, whose write would be refused: a stale
// hint costs that refused write, or a graph of one job, never a run
// queued without its needs (queueRuns refuses a job with needs).
func (s *Server) execute(ctx context.Context, p *principal, name string, req api.ExecuteRequest) (*api.Run, error) {
	if _, graph := s.graphJobs.Load(name); !req.Reuse && !graph {
		run, err := s.executeJob(ctx, p, name, req.Reproduce, req.Priority)
		var ne *needsError
		if !errors.As(err, &ne) {
			return run, err
		}
		s.graphJobs.Store(name, true)
	}
	return s.executeGraph(ctx, p, name, req, "execute", "")
}

// releaseNeeds settles the runs waiting for runs ids, which ended (or may
// have: only ended ones count): ready ones join the queue, the others are
// skipped. A failure is logged: the result is stored, and the next start
// settles what is left (resumeNeeds).
func (s *Server) releaseNeeds(ctx context.Context, ids ...int64) {
	if len(ids) == 0 {
		return
	}
	if err := s.settleNeeds(ctx, ids); err != nil {
		s.log.Error("releasing the runs that need ended runs", "runs", ids, "err", err)
	}
}

func (s *Server) settleNeeds(ctx context.Context, ids []int64) error {
	has, err := s.st.hasDependents(ctx, ids)
	if err != nil || !has {
		return err
	}
	ready, skipped, err := s.st.settleNeeds(ctx, ids, s.now())
	if err != nil {
		return err
	}
	for _, x := range ready {
		if err := s.enqueue(ctx, x); err != nil {
			return err
		}
		s.changed(x.id)
	}
	for _, id := range skipped {
		s.changed(id)
	}
	if len(ready)+len(skipped) > 0 {
		s.log.Info("needs settled", "ended", ids, "queued", len(ready), "skipped", len(skipped))
	}
	return nil
}

// resumeNeeds settles, at start-up, the waiting runs whose needs ended
// while no server was there to release them.
func (s *Server) resumeNeeds(ctx context.Context) error {
	ended, err := s.st.endedNeeds(ctx)
	if err != nil {
		return err
	}
	if len(ended) == 0 {
		return nil
	}
	return s.settleNeeds(ctx, ended)
}

// runEnded is what follows a run's end beyond its own row: the runs that
// need it move on, and a success executes the jobs on its success. Those
// are durable (store_triggers.go): the run stays marked pending until
// they are fired, and the next start fires what a stop left pending
// (resumeTriggers).
func (s *Server) runEnded(ctx context.Context, run *api.Run) {
	id, err := parseRunID(run.ID)
	if err != nil {
		return
	}
	s.releaseNeeds(ctx, id)
	if run.State == api.StateSucceeded {
		s.fireSuccess(ctx, id, run.Job, run.Kind)
	}
}

// triggerTestPause, a duration in the environment, makes the server wait
// that long after a run's success is stored and before its triggers are
// fired: tests SIGKILL a server at that point with it
// (TestTriggerSurvivesCrash).
const triggerTestPause = "KILN_TRIGGER_TEST_PAUSE"

// fireSuccess fires the success triggers of run id of job, then marks
// them fired. When one could not be executed for a reason that may pass,
// or the mark fails, they stay pending: a later start fires them again,
// which executes nothing twice (errTriggerFired).
func (s *Server) fireSuccess(ctx context.Context, id int64, job, kind string) {
	if d, err := time.ParseDuration(os.Getenv(triggerTestPause)); err == nil && d > 0 {
		s.log.Warn("pausing before firing triggers", "run", id, "env", triggerTestPause, "pause", d)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	// The result is stored: its triggers fire even if the request that
	// brought it is gone meanwhile.
	ctx = context.WithoutCancel(ctx)
	if kind != api.KindDiffoscope {
		if _, incomplete := s.fireEvent(ctx, api.TriggerSuccess+":"+job, id, "run:"+itoa(id)); incomplete {
			return
		}
	}
	if err := s.st.markTriggersFired(ctx, id); err != nil {
		s.log.Error("marking triggers fired", "run", id, "err", err)
	}
}

// resumeTriggers fires, at start-up, the success triggers of the runs
// that succeeded, and the triggers of the image versions published,
// while no server fired them (it stopped in between).
// Replicas starting together may both fire one: the run's cause makes
// the second execute nothing.
func (s *Server) resumeTriggers(ctx context.Context) error {
	pending, err := s.st.pendingTriggers(ctx)
	if err != nil {
		return err
	}
	for _, p := range pending {
		s.log.Info("firing pending triggers", "run", p.id, "job", p.job)
		s.fireSuccess(ctx, p.id, p.job, "")
	}
	images, err := s.st.pendingImageTriggers(ctx)
	if err != nil {
		return err
	}
	for _, p := range images {
		s.log.Info("firing pending triggers", "image", p.name, "version", p.version)
		s.imagePublished(ctx, p.name, p.version)
	}
	return nil
}

// imagePublished executes the jobs on a new version of server-held image
// name ("image:NAME"); the image publish path calls it once the version
// is stored, which stays marked pending until then (resumeTriggers). It
// answers the runs executed.
func (s *Server) imagePublished(ctx context.Context, name string, version int64) []*api.Run {
	ctx = context.WithoutCancel(ctx)
	runs, incomplete := s.fireEvent(ctx, api.TriggerImage+":"+name, 0, fmt.Sprintf("image:%s:%d", name, version))
	if incomplete {
		return runs
	}
	if err := s.st.markImageTriggersFired(ctx, name, version); err != nil {
		s.log.Error("marking triggers fired", "image", name, "version", version, "err", err)
	}
	return runs
}

// fireEvent executes, as their owners, the jobs whose on lists event.
// need is the run whose success the event is (0 for none): a job one of
// whose runs still on its way builds on it is not executed again. cause
// is recorded in the runs executed; a job that already has a run of that
// cause is not executed again. A job that cannot be executed (its owner's
// queue is full, its graph broke) is logged and the others still are.
// incomplete says that a job was not executed for a reason that may pass
// (the database's error, not a refusal): the trigger is then left pending
// for the next start, which executes only what is missing.
func (s *Server) fireEvent(ctx context.Context, event string, need int64, cause string) (out []*api.Run, incomplete bool) {
	jobs, err := s.st.triggered(ctx, event)
	if err != nil {
		s.log.Error("reading triggers", "event", event, "err", err)
		return nil, true
	}
	for _, job := range jobs {
		if need != 0 {
			busy, err := s.st.consumed(ctx, job, need)
			if err != nil {
				s.log.Error("reading triggers", "event", event, "job", job, "err", err)
				incomplete = true
				continue
			}
			if busy {
				continue
			}
		}
		ji, err := s.st.job(ctx, job)
		if err != nil {
			s.log.Warn("trigger not fired", "event", event, "job", job, "err", err)
			continue
		}
		run, err := s.executeGraph(ctx, ownerPrincipal(ji.Owner), job, api.ExecuteRequest{}, "on "+event, cause)
		if errors.Is(err, errTriggerFired) {
			s.log.Info("trigger already fired", "event", event, "job", job, "cause", cause)
			continue
		}
		if err != nil {
			var ae *apiError
			incomplete = incomplete || !errors.As(err, &ae)
			s.log.Warn("trigger not fired", "event", event, "job", job, "err", err)
			continue
		}
		s.log.Info("trigger fired", "event", event, "job", job, "run", run.ID)
		out = append(out, run)
	}
	return out, incomplete
}

// ownerPrincipal acts for owner when the server itself executes a job
// (a trigger, a schedule of a job with needs): it sees what owner sees.
func ownerPrincipal(owner string) *principal {
	if owner == ownerAdmin {
		return &principal{kind: kindAdmin}
	}
	return &principal{kind: kindClient, ownerKey: owner}
}

// placeNeeds puts into a the artifacts of the runs run id needs that its
// needs' globs select. Every needed run must have succeeded: a run never
// runs on partial input.
func (s *Server) placeNeeds(ctx context.Context, id int64, a *api.Assignment) error {
	arts, err := s.st.neededArtifacts(ctx, id)
	if err != nil {
		return err
	}
	for _, n := range a.Job.Needs {
		i := slices.IndexFunc(arts, func(x neededArtifact) bool { return x.job == n.Job })
		if i < 0 || arts[i].state != api.StateSucceeded {
			return fmt.Errorf("run %d: needed job %s has no succeeded run", id, n.Job)
		}
	}
	for _, x := range arts {
		i := slices.IndexFunc(a.Job.Needs, func(n api.Need) bool { return n.Job == x.job })
		if x.path == "" || i < 0 || !a.Job.Needs[i].Matches(x.path) {
			continue
		}
		a.Needs = append(a.Needs, api.NeededArtifact{Job: x.job, Run: itoa(x.run), Path: x.path, Size: x.size, SHA256: x.sha})
	}
	return nil
}

// depWaiting says which needed runs a waiting run waits for:
// "dep-wait: libfoo run 812, tool run 813".
func depWaiting(needs []api.RunNeed) string {
	var l []string
	for _, n := range needs {
		if n.State != api.StateSucceeded {
			l = append(l, n.Job+" run "+n.Run)
		}
	}
	return "dep-wait: " + strings.Join(l, ", ")
}

// fireGraph fires the schedule of job, which has needs, through its graph.
func (s *Server) fireGraph(ctx context.Context, job string) {
	ji, err := s.st.job(ctx, job)
	if err == nil {
		var run *api.Run
		if run, err = s.executeGraph(ctx, ownerPrincipal(ji.Owner), job, api.ExecuteRequest{}, "schedule", ""); err == nil {
			s.log.Info("schedule fired", "job", job, "run", run.ID)
			return
		}
	}
	s.log.Warn("schedule not fired", "job", job, "err", err)
}

package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/scheduler/queue"
)

func newFence() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// enqueue makes a committed queued run visible to the dispatcher.
func (s *Server) enqueue(ctx context.Context, x queuedRun) error {
	j, err := s.jobSpec(ctx, x.job, x.rev)
	if err != nil {
		return err
	}
	pin, err := s.pinned(ctx, x.image)
	if err != nil {
		return err
	}
	q := &queue.Run{ID: x.id, Job: j, QueuedAt: x.queuedAt, Group: x.grp, Kind: x.kind, Owner: x.owner, Priority: x.priority, JobName: x.job, Rev: x.rev, Image: pin}
	switch {
	case !s.st.postgres():
		s.disp.Offer(q)
	case !s.disp.OfferOrShare(q):
		// Only a run no worker here waits for is worth the other
		// replicas' attention: offered to theirs too, it would cost a
		// failed claim on one side for nothing.
		s.pgQueued(q, x.job, x.rev)
	}
	// Only local: the other replicas' waiters on the run, if any, heard
	// of it when it changed to leave the queue (and a new run has none).
	s.notify.notify(x.id)
	return nil
}

// loadRunning counts the leased and running runs as their owners' running
// work (at start-up).
func (s *Server) loadRunning(ctx context.Context) error {
	leased, err := s.st.leasedRuns(ctx)
	if err != nil {
		return err
	}
	for _, l := range leased {
		s.disp.Running(l.id, l.owner)
	}
	return nil
}

// ended tells the dispatcher that runs ids are no longer leased (they
// ended or went back to the queue), so their owners' slots free up, here
// and, on PostgreSQL, in the other replicas.
func (s *Server) ended(ids ...int64) {
	for _, id := range ids {
		s.disp.Done(id)
		if s.st.postgres() {
			s.pgEnded(id)
		}
	}
}

// loadQueue rebuilds the dispatcher from the database at start-up.
func (s *Server) loadQueue(ctx context.Context) error {
	placed, err := s.st.placements(ctx)
	if err != nil {
		return err
	}
	for _, p := range placed {
		s.disp.PlacedAt(p.grp, p.host)
	}
	queued, err := s.st.queuedRuns(ctx)
	if err != nil {
		return err
	}
	for _, x := range queued {
		if err := s.enqueue(ctx, x); err != nil {
			return err
		}
	}
	return nil
}

// lease long-polls up to wait for a run host can run and leases it.
// It returns nil when none came in time.
func (s *Server) lease(ctx context.Context, host string, facts *api.Facts, drained bool, wait time.Duration) (*api.Assignment, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if drained {
		<-wctx.Done()
		return nil, nil
	}
	for {
		w := queue.NewWaiter(host, facts)
		q := s.disp.Take(wctx, w)
		if q == nil {
			return nil, nil
		}
		if ctx.Err() != nil {
			s.disp.Return(q, w)
			return nil, ctx.Err()
		}
		a, miss, err := s.claim(ctx, host, facts, q)
		if err != nil {
			s.disp.Return(q, w)
			return nil, err
		}
		if a != nil {
			return a, nil
		}
		switch miss {
		case missPlaced:
			// Another replica placed a member of the group on host:
			// remember it, so that this queue offers the run elsewhere.
			s.disp.Unhand(q, w)
			s.disp.PlacedAt(q.Group, host)
			s.requeueShared(q)
		case missLimit:
			// The owner is at its max_running counting the runs other
			// replicas leased, which this queue does not know of: its
			// runs wait here until a run ends (on any replica: the ended
			// note) or, should that note be lost, for fullRetry.
			s.disp.Full(q.Owner, fullRetry)
			s.disp.Unhand(q, w)
			s.requeueShared(q)
		case missBusy:
			// Another replica's claim holds the row: offer the run again
			// in a moment, in case that claim rolls back (else the next
			// claim here finds it leased and drops it).
			s.disp.Unhand(q, w)
			time.AfterFunc(busyRetry, func() { s.disp.Offer(q) })
		default:
			s.disp.Unhand(q, w)
		}
	}
}

// requeueShared puts q, handed to a worker here whose claim leased
// nothing while the run stays queued (its group placed a member on that
// host, or its owner is full), back into this queue and, on PostgreSQL,
// announces it to the other replicas if they may not have it: a run
// handed at once to a worker of this replica was announced to nobody,
// and would otherwise wait here alone, for a worker of this replica, or
// for the others' orphan sweep (orphanAge). (TestReplicasShareMaxRunning
// met it: the run left for the second host was in the other replica's
// queue only.)
func (s *Server) requeueShared(q *queue.Run) {
	announce := s.st.postgres() && !q.Shared
	if announce {
		q.Shared = true // before Offer, after which workers may take q
	}
	s.disp.Offer(q)
	if announce {
		s.pgQueued(q, q.JobName, q.Rev)
	}
}

// busyRetry is how long a run another replica is claiming waits before
// this replica offers it again.
const busyRetry = 20 * time.Millisecond

// fullRetry bounds how long an owner found at its max_running by a claim
// (see missLimit) is skipped without word of a run ending.
const fullRetry = pgPoll

// claim leases q to host if it is still queued and host may take it; nil
// means it did not, and miss says why.
func (s *Server) claim(ctx context.Context, host string, facts *api.Facts, q *queue.Run) (*api.Assignment, claimMiss, error) {
	now := s.now()
	factsJSON, _ := jsonString(facts)
	r := claimReq{id: q.ID, grp: q.Group, kind: q.Kind, host: host, facts: factsJSON,
		fence: newFence(), leased: now, expires: now.Add(s.leaseDuration), waited: now.Add(-s.disp.ReproduceWait()),
		owner: q.Owner, maxRunning: s.ownerConfig(q.Owner).MaxRunning}
	c, miss, err := s.st.claim(ctx, r)
	if err != nil || c == nil {
		return nil, miss, err
	}
	s.metrics.observeDispatch(now.Sub(q.QueuedAt))
	s.notify.notify(q.ID)
	if s.st.postgres() && q.Shared {
		s.pgLeased(q.ID)
	}
	a, err := s.assignment(q, r, c)
	if err == nil && len(q.Job.Needs) > 0 {
		err = s.placeNeeds(ctx, q.ID, a)
	}
	return a, missGone, err
}

// assignment is what the worker is told of claim r of q.
func (s *Server) assignment(q *queue.Run, r claimReq, c *claimed) (*api.Assignment, error) {
	a := &api.Assignment{
		ServerID: s.id, RunID: itoa(q.ID), Job: *q.Job, Revision: c.rev, Attempt: c.attempt, Fence: r.fence, Expires: r.expires, Member: c.member,
		Owner: api.CacheOwner(s.id, c.owner),
	}
	if c.grp != 0 {
		a.Group = itoa(c.grp)
		if err := json.Unmarshal([]byte(c.variations), &a.Variations); err != nil {
			return nil, fmt.Errorf("run %d variations: %w", q.ID, err)
		}
	}
	if q.Image != nil {
		pin := *q.Image
		a.Image = &pin
	}
	if c.env != "" {
		if err := withRunEnv(a, c.env); err != nil {
			return nil, fmt.Errorf("run %d env: %w", q.ID, err)
		}
	}
	if q.Kind == api.KindDiffoscope {
		a.Diffoscope = &api.DiffoscopeTask{}
		if err := json.Unmarshal([]byte(c.task), a.Diffoscope); err != nil {
			return nil, fmt.Errorf("run %d task: %w", q.ID, err)
		}
	}
	return a, nil
}

// heartbeat records facts and renews the leases host still holds.
func (s *Server) heartbeat(ctx context.Context, host string, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	now := s.now()
	expires := now.Add(s.leaseDuration)
	facts, _ := jsonString(req.Facts)
	resp := &api.HeartbeatResponse{Expires: expires, ServerID: s.id}
	if err := s.st.heartbeat(ctx, host, facts, req, now, expires, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// expireLeases requeues runs whose lease ran out as a new attempt, or ends
// them (cancelled if a cancel was asked, lost after the last attempt).
func (s *Server) expireLeases(ctx context.Context) error {
	now := s.now()
	again, touched, err := s.st.expireLeases(ctx, now, s.maxAttempts)
	if err != nil {
		return err
	}
	s.metrics.leaseExpiries.Add(float64(len(touched)))
	s.ended(touched...)
	for _, r := range again {
		if err := s.enqueue(ctx, r); err != nil {
			return err
		}
	}
	for _, id := range touched {
		s.changed(id)
	}
	s.releaseNeeds(ctx, touched...)
	if err := s.settle(ctx, touched...); err != nil {
		return err
	}
	if len(touched) > 0 {
		s.log.Info("leases expired", "runs", len(touched), "requeued", len(again))
	}
	return nil
}

// complete records a run's result, exactly once: the fence must be the
// current lease's; the same fence repeating its result is answered with
// the stored run.
func (s *Server) complete(ctx context.Context, host string, id int64, req *api.ResultRequest) (*api.Run, error) {
	if err := s.checkResult(req); err != nil {
		return nil, err
	}
	if req.Checks == nil {
		req.Checks = []api.Check{}
	}
	checks, _ := json.Marshal(req.Checks)
	s.checkAttestation(ctx, host, req)
	// An image build's success is its published version (imagebuild.go).
	if err := s.publishBuilt(ctx, host, id, req); err != nil {
		req.Error, req.ExitCode = "image build: "+err.Error(), -1
	}
	now := s.now()
	// The final state; a failure is a cancellation when a cancel was
	// asked, which the statement reads from the row.
	final, ifCancelled := api.StateFailed, api.StateFailed
	switch {
	case req.TimedOut:
		final, ifCancelled = api.StateTimedOut, api.StateTimedOut
	case req.ExitCode != 0 || req.Signal != "":
		ifCancelled = api.StateCancelled
	case req.Error == "":
		final, ifCancelled = api.StateSucceeded, api.StateSucceeded
	}
	run, err := s.st.recordResult(ctx, host, id, result{req: req, final: final, ifCancelled: ifCancelled, checks: string(checks), now: now})
	if err != nil {
		return nil, err
	}
	if run == nil {
		// Not recorded: a repeated result of this lease is answered with
		// the stored run; any other is refused.
		l, err := s.st.lease(ctx, id)
		if err != nil {
			return nil, err
		}
		if !l.holds(host, req.Fence) || !api.Terminal(l.state) {
			return nil, staleFence(id)
		}
		return s.getRun(ctx, id)
	}
	s.metrics.completed.Inc()
	s.ended(id)
	s.changed(id)
	s.runEnded(ctx, run)
	run.Artifacts = req.Artifacts
	if run.Group != "" {
		if err := s.settle(ctx, id); err != nil {
			// The result is stored; the verdict is decided again when the
			// group is next touched or read.
			s.log.Error("deciding group verdict", "run", id, "err", err)
		}
	}
	s.publishAfterRun(ctx, run)
	return run, nil
}

// checkFence verifies that host holds run id's current lease.
func (s *Server) checkFence(ctx context.Context, host string, id int64, fence string) error {
	l, err := s.st.lease(ctx, id)
	if err != nil {
		return err
	}
	if !l.holds(host, fence) || api.Terminal(l.state) {
		return staleFence(id)
	}
	return nil
}

// checkResult refuses a result whose artifacts are not uploaded as
// described, or whose checks lack a name.
func (s *Server) checkResult(req *api.ResultRequest) error {
	seen := map[string]bool{}
	for _, a := range req.Artifacts {
		if err := names.ValidRelPath(a.Path); err != nil {
			return badRequest("artifact path %q: %v", a.Path, err)
		}
		if seen[a.Path] {
			return badRequest("artifact path %q given twice", a.Path)
		}
		seen[a.Path] = true
		if a.Size < 0 {
			return badRequest("artifact %q: negative size", a.Path)
		}
		ok, size, err := s.blobs.Size(a.SHA256)
		if err != nil {
			return badRequest("artifact %q: %v", a.Path, err)
		}
		if !ok {
			return badRequest("artifact %q: blob %s is not uploaded", a.Path, a.SHA256)
		}
		if size != a.Size {
			return badRequest("artifact %q: size %d, but blob %s has %d bytes", a.Path, a.Size, a.SHA256, size)
		}
	}
	for _, c := range req.Checks {
		if c.Name == "" {
			return badRequest("check without a name")
		}
	}
	return nil
}

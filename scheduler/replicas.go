package scheduler

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/queue"
)

// With PostgreSQL several servers (replicas) share the queue. Each keeps
// its in-memory queue (dispatch.go) as an index of the database, fed by
// its own enqueues and by the other replicas' (LISTEN/NOTIFY, and a poll
// for lost notifications); a lease is claimed by one conditional UPDATE
// of the run's row that skips a row another claim holds (claimTx), so two
// replicas offering one run to their workers cost a failed claim, never a
// double lease nor a wait. The periodic sweeps run on the one replica
// holding the leader lock.

const (
	// chanQueue carries a run queued by a replica that had no worker
	// waiting for it (queueNote); chanRun a run id whose state or console
	// changed (long-polls of observers), followed by leasedSuffix when a
	// replica leased the run (the others drop it from their queues).
	chanQueue    = "kiln_queue"
	chanRun      = "kiln_run"
	leasedSuffix = ":leased"
	// endedSuffix follows a run id on chanRun when the run is no longer
	// leased (it ended, or was requeued): its owner's slot frees up in
	// every replica's dispatcher.
	endedSuffix = ":ended"
	// chanAuth: a client token was revoked or a host removed (authChanged);
	// every replica clears its auth cache.
	chanAuth = "kiln_auth"
	// leaderLock is the advisory lock the leader replica holds.
	leaderLock = 0x6b696c6e + 1
	// pgPoll is how often a replica looks for runs queued elsewhere
	// without a notification, and how often it tries to become the
	// leader.
	pgPoll = time.Second
	// orphanAge: every orphanAge, a replica also offers the runs queued
	// for longer than that, wherever they were queued. A replica hands a
	// run to one of its own waiting workers without telling the others;
	// if it dies before that worker's claim commits, the run is queued
	// in no replica's queue but would wait for a restart.
	orphanAge = 10 * time.Second
)

// queueNote is a run queued by replica (id 0: reload the whole queue).
type queueNote struct {
	replica   string
	id        int64
	rev       int
	grp       int64
	kind, job string
	queuedAt  time.Time
	priority  int
	owner     string
	image     string // the pinned image version ("": none)
	// leased, ended: not a queued run but another replica's lease of
	// run id, or its end, which go to the feeder (feedQueue) behind the
	// notes received before them.
	leased, ended bool
}

// String is the notification payload:
// "REPLICA:ID:REV:GRP:KIND:QUEUED_AT_NS:PRIORITY:JOB:OWNER:IMAGE",
// everything the receiver's queue needs without reading the run back. The
// owner holds a colon, so the image reference (which has none; "" for a
// run pinned to none) is read from the last colon: a replica of the
// version before pinned images reads it as part of the owner, which costs
// that run only its fair-share accounting there, never the wrong job.
func (n queueNote) String() string {
	return strings.Join([]string{n.replica, strconv.FormatInt(n.id, 10), strconv.Itoa(n.rev), strconv.FormatInt(n.grp, 10),
		n.kind, strconv.FormatInt(ns(n.queuedAt), 10), strconv.Itoa(n.priority), n.job, n.owner, n.image}, ":")
}

func parseQueueNote(payload string) (queueNote, bool) {
	i := strings.LastIndexByte(payload, ':')
	if i < 0 {
		return queueNote{}, false
	}
	image := payload[i+1:]
	f := strings.SplitN(payload[:i], ":", 9)
	if len(f) != 9 {
		return queueNote{}, false
	}
	var n queueNote
	var err [5]error
	n.replica, n.kind, n.job, n.owner, n.image = f[0], f[4], f[7], f[8], image
	n.id, err[0] = strconv.ParseInt(f[1], 10, 64)
	n.rev, err[1] = strconv.Atoi(f[2])
	n.grp, err[2] = strconv.ParseInt(f[3], 10, 64)
	var at int64
	at, err[3] = strconv.ParseInt(f[5], 10, 64)
	n.queuedAt = time.Unix(0, at)
	n.priority, err[4] = strconv.Atoi(f[6])
	return n, errors.Join(err[:]...) == nil && n.id > 0
}

// pgNotify tells every replica (this one included, through its listener)
// that run id changed.
func (s *Server) pgNotify(id int64) { s.st.notify(chanRun, strconv.FormatInt(id, 10)) }

// listenWait bounds how long a starting replica waits for its first
// LISTEN before it serves anyway (its poll then stands in).
const listenWait = 10 * time.Second

// awaitListening waits until the replica listens (listening is closed),
// at most listenWait. A replica that served before it listened would
// miss the notifications sent meanwhile: a run queued through another
// replica then reached it only by the reload when its LISTEN was done,
// or its poll. Measured under load (issue 29): replica B of
// TestReplicasPlaceGroupApart answered /healthz and took a lease
// long-poll 15-100 ms before it listened, after replica A had announced
// the runs it was to offer.
func (s *Server) awaitListening(ctx context.Context, listening <-chan struct{}) {
	select {
	case <-listening:
	case <-ctx.Done():
	case <-time.After(listenWait):
		s.log.Warn("serving before listening for the other replicas' notifications; the poll stands in", "waited", listenWait)
	}
}

// listen relays the notifications of other replicas to this one's
// waiters until ctx ends, reconnecting when the connection drops; it
// closes listening when its first LISTEN is done.
func (s *Server) listen(ctx context.Context, listening chan<- struct{}) {
	var once sync.Once
	ready := func() { once.Do(func() { close(listening) }) }
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, ready)
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

func (s *Server) listenOnce(ctx context.Context, ready func()) error {
	conn, err := s.st.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.close(ctx)
	if err := conn.listen(ctx, chanQueue, chanRun, chanAuth); err != nil {
		return err
	}
	// A revocation may have been notified while nobody listened.
	s.auth.clear()
	s.notify.notifyAll()
	select {
	case s.feed <- queueNote{}: // reload the queue: notifications may have been lost
	default:
	}
	received := map[string]prometheus.Counter{}
	for _, ch := range []string{chanQueue, chanRun, chanAuth} {
		received[ch] = s.metrics.notes.WithLabelValues(ch)
	}
	ready()
	for {
		channel, payload, err := conn.next(ctx)
		if err != nil {
			return err
		}
		switch channel {
		case chanAuth:
			s.auth.clear()
		case chanQueue:
			if q, ok := parseQueueNote(payload); ok && q.replica != s.replica {
				select {
				case s.feed <- q:
				default: // the feeder is behind; its poll catches up
				}
			}
		default:
			idText, leased := strings.CutSuffix(payload, leasedSuffix)
			idText, ended := strings.CutSuffix(idText, endedSuffix)
			if id, err := strconv.ParseInt(idText, 10, 64); err == nil {
				s.notify.notify(id)
				if leased || ended {
					// To the feeder, in order with the queue notes received
					// before. Applied here at once, a lease overtook the
					// queue note of its run still in the feed, which then
					// queued the leased run here, to be offered to a worker
					// for a failed claim (seen in half the runs of
					// TestReplicasPlaceGroupApart); and the end follows its
					// lease, so that a run's running count is never taken
					// after its end. The feeder counts them once acted on.
					n := queueNote{id: id, leased: leased, ended: ended}
					if ended {
						// Never dropped: a lost end would keep counting the
						// run as its owner's running work.
						select {
						case s.feed <- n:
						case <-ctx.Done():
							return ctx.Err()
						}
						continue
					}
					select {
					case s.feed <- n:
						continue
					default: // the feeder is behind: the next claim here finds the run leased
					}
				}
			}
		}
		// Counted once acted on, so that a count seen means it is done.
		if c := received[channel]; c != nil {
			c.Inc()
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
	conn, err := s.st.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.close(ctx)
	for {
		got, err := conn.tryLock(ctx, leaderLock)
		if err != nil {
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
			err := conn.ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		}
	}
}

// leading reports whether this server runs the periodic sweeps: always
// with SQLite, with PostgreSQL while it holds the leader lock.
func (s *Server) leading() bool { return !s.st.postgres() || s.leader.Load() }

// pgQueued tells the other replicas that run q (of job revision rev)
// was queued here (this replica's queue has it already).
func (s *Server) pgQueued(q *queue.Run, job string, rev int) {
	n := queueNote{replica: s.replica, id: q.ID, rev: rev, grp: q.Group, kind: q.Kind, job: job, queuedAt: q.QueuedAt, priority: q.Priority, owner: q.Owner}
	if q.Image != nil {
		n.image = q.Image.Ref()
	}
	s.st.notify(chanQueue, n.String())
}

// pgLeased tells the other replicas that run id, which they may hold in
// their queues (queue.Run.Shared), is leased: their queues drop it instead of
// costing a failed claim. (Nobody else waits for a lease: console readers
// wait for console bytes, a new attempt or the end.)
// A note that overtakes the run's requeueing costs those queues the run
// until their orphan sweep; the replica that requeued it has it.
func (s *Server) pgLeased(id int64) {
	s.st.notify(chanRun, strconv.FormatInt(id, 10)+leasedSuffix)
}

// pgEnded tells the other replicas that run id is no longer leased, so
// that their dispatchers stop counting it as its owner's running work.
func (s *Server) pgEnded(id int64) {
	s.st.notify(chanRun, strconv.FormatInt(id, 10)+endedSuffix)
}

// feedQueue puts runs queued elsewhere into this replica's queue: the one
// a notification names, every pgPoll (lost notifications) those newer
// than any seen, and every orphanAge those queued for longer, until ctx
// ends. A run another replica leases meanwhile stays in this queue until
// its leased notification or a claim here drops it.
func (s *Server) feedQueue(ctx context.Context, notes <-chan queueNote) {
	t := time.NewTicker(pgPoll)
	defer t.Stop()
	lastOrphans := s.now()
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case n := <-notes:
			if n.leased || n.ended {
				if n.leased {
					s.disp.LeasedElsewhere(n.id)
				} else {
					s.disp.Done(n.id)
				}
				s.metrics.notes.WithLabelValues(chanRun).Inc()
				break
			}
			if n.id == 0 {
				err = s.loadQueue(ctx) // notifications may have been lost
				break
			}
			var j *api.Job
			var pin *api.ImageVersion
			if j, err = s.jobSpec(ctx, n.job, n.rev); err == nil {
				pin, err = s.pinned(ctx, n.image)
			}
			if err == nil {
				s.disp.Offer(&queue.Run{ID: n.id, Job: j, QueuedAt: n.queuedAt, Group: n.grp, Kind: n.kind, Owner: n.owner, Priority: n.priority, JobName: n.job, Rev: n.rev, Shared: true, Image: pin})
			}
		case <-t.C:
			err = s.feedNewer(ctx)
			if now := s.now(); err == nil && now.Sub(lastOrphans) >= orphanAge {
				lastOrphans = now
				err = s.feedOrphans(ctx, now.Add(-orphanAge))
			}
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("reading runs queued by other replicas", "err", err)
		}
	}
}

// feedNewer offers the queued runs newer than any in the queue.
func (s *Server) feedNewer(ctx context.Context) error {
	rs, err := s.st.queuedAfter(ctx, s.disp.MaxID())
	if err != nil {
		return err
	}
	return s.feedRuns(ctx, rs)
}

// feedOrphans offers the runs queued before t.
func (s *Server) feedOrphans(ctx context.Context, t time.Time) error {
	rs, err := s.st.queuedBefore(ctx, t)
	if err != nil {
		return err
	}
	return s.feedRuns(ctx, rs)
}

// feedRuns offers the queued runs that rs lists.
func (s *Server) feedRuns(ctx context.Context, rs []sharedRun) error {
	for _, r := range rs {
		j, err := s.jobSpecFrom(r.job, r.rev, r.spec)
		if err != nil {
			return err
		}
		pin, err := s.pinned(ctx, r.image)
		if err != nil {
			return err
		}
		s.disp.Offer(&queue.Run{ID: r.id, Job: j, QueuedAt: r.queuedAt, Group: r.grp, Kind: r.kind, Owner: r.owner, Priority: r.priority, JobName: r.job, Rev: r.rev, Shared: true, Image: pin})
	}
	return nil
}

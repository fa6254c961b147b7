package scheduler

import (
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/queue"
)

// QueueStale puts run id (member of group grp, of job j), which a host
// leased already, back into s's queue: the stale entry that a leased
// notification overtaking the queued one leaves on PostgreSQL, made here
// on purpose (TestStaleMemberLeavesHostFree).
func (s *Server) QueueStale(id, grp int64, j api.Job) {
	s.disp.Offer(&queue.Run{ID: id, Job: &j, QueuedAt: s.now().Add(-time.Second), Group: grp, Kind: api.KindJob})
}

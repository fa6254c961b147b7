package scheduler

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/kiln-build/kiln/api"
)

// publishDone stores the publish.done events of publication pub of run
// id (docs/webhooks.md) in the outbox, for the server's and the run's
// job's receivers that asked for it; they are sent as the run events
// are. A failure is logged: the publication itself is recorded on the
// run either way.
func (s *Server) publishDone(ctx context.Context, id int64, pub api.Publication) {
	run, err := s.st.run(ctx, id)
	if err != nil {
		s.log.Error("publish.done event", "run", id, "err", err)
		return
	}
	now := s.now()
	b, _ := json.Marshal(api.NotifyPayload{Event: api.EventPublishDone, Server: s.id, Time: pub.Time, Run: run, Publication: &pub})
	deadline := ns(now.Add(time.Duration(s.cfg.NotifyRetryFor)))
	var rows []outboxRow
	for _, t := range s.eventTargets(ctx, id, run.Job, run.Revision) {
		if slices.Contains(t.events, api.EventPublishDone) {
			rows = append(rows, outboxRow{run: id, url: t.url, event: api.EventPublishDone, secretRef: t.secretRef, body: string(b), created: ns(now), deadline: deadline})
		}
	}
	if len(rows) == 0 {
		return
	}
	if err := s.st.addEvents(ctx, rows, now); err != nil {
		s.log.Error("publish.done event", "run", id, "err", err)
	}
}

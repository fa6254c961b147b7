package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/queue"
)

// parseRunID accepts the decimal run IDs the API hands out.
func parseRunID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, notFound("no run %q", s)
	}
	return id, nil
}

func (s *Server) getRun(ctx context.Context, id int64) (*api.Run, error) {
	r, err := s.st.run(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.Artifacts, err = s.st.artifacts(ctx, id); err != nil {
		return nil, err
	}
	if r.Kept, err = s.st.runKept(ctx, id); err != nil {
		return nil, err
	}
	if r.Publications, err = s.st.publications(ctx, id); err != nil {
		return nil, err
	}
	if r.Key, r.Needs, err = s.st.runGraph(ctx, id); err != nil {
		return nil, err
	}
	if r.State == api.StateDepWait {
		r.Waiting = depWaiting(r.Needs)
	}
	if r.State == api.StateQueued && r.Kind != api.KindDiffoscope {
		if r.Waiting, err = s.waiting(ctx, id, r.Job, r.Revision, r.Image); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// waiting says why queued run id of job revision rev is not leased, judged
// by the facts the enrolled hosts last sent and, when a host can run it,
// by the dispatcher's rules between and within owners. image is the
// server-held image version the run is pinned to ("": none).
func (s *Server) waiting(ctx context.Context, id int64, job string, rev int, image string) (string, error) {
	j, err := s.jobSpec(ctx, job, rev)
	if err != nil {
		return "", err
	}
	pin, err := s.pinned(ctx, image)
	if err != nil {
		return "", err
	}
	hosts, err := s.listHosts(ctx, "")
	if err != nil {
		return "", err
	}
	if len(hosts) == 0 {
		return "no host is enrolled", nil
	}
	var able, drained, reasons, limits []string
	for _, h := range hosts {
		why, over := queue.RefusalImage(j, pin, &h.Facts)
		switch {
		case why == "" && h.Drained:
			drained = append(drained, h.Name)
		case why == "":
			able = append(able, h.Name)
		default:
			reasons = append(reasons, h.Name+": "+why)
			if over {
				limits = append(limits, why)
			}
		}
	}
	switch {
	case len(able) > 0:
		owner, err := s.st.runOwner(ctx, id)
		if err != nil {
			return "", err
		}
		why, err := s.queueWait(ctx, id, owner)
		if err != nil {
			return "", err
		}
		if why != "" {
			return why, nil
		}
		return "for a free slot on " + strings.Join(able, ", "), nil
	case len(drained) > 0:
		return "the hosts that can run it are drained (" + strings.Join(drained, ", ") + ")", nil
	case len(limits) == len(hosts) && len(slices.Compact(slices.Sorted(slices.Values(limits)))) == 1:
		return "no enrolled host allows " + limits[0], nil
	}
	return "no enrolled host can run it (" + strings.Join(reasons, "; ") + ")", nil
}

// listRuns lists the runs p sees, newest first.
func (s *Server) listRuns(ctx context.Context, p *principal, job string, group int64, limit int) ([]api.Run, error) {
	return s.st.runs(ctx, runQuery{job: job, group: group, limit: limit, owner: p.ownerFilter()})
}

// cancelRun ends a queued run at once; a leased or running one gets
// cancel_asked, which its worker learns from the heartbeat answer.
func (s *Server) cancelRun(ctx context.Context, id int64) (*api.Run, error) {
	now := s.now()
	wasQueued, err := s.st.cancelRun(ctx, id, now)
	if err != nil {
		return nil, err
	}
	if wasQueued {
		s.disp.Remove(id)
		s.releaseNeeds(ctx, id)
		if err := s.settle(ctx, id); err != nil {
			return nil, err
		}
	}
	s.changed(id)
	return s.getRun(ctx, id)
}

// jobSpec returns a stored revision of a job; revisions never change, so
// they are cached.
func (s *Server) jobSpec(ctx context.Context, name string, rev int) (*api.Job, error) {
	if j, ok := s.cachedSpec(name, rev); ok {
		return j, nil
	}
	spec, err := s.st.revisionSpec(ctx, name, rev)
	if err != nil {
		return nil, fmt.Errorf("job %s revision %d: %w", name, rev, err)
	}
	return s.jobSpecFrom(name, rev, spec)
}

// jobSpecFrom is jobSpec with the stored spec already read.
func (s *Server) jobSpecFrom(name string, rev int, spec string) (*api.Job, error) {
	if j, ok := s.cachedSpec(name, rev); ok {
		return j, nil
	}
	j := &api.Job{}
	if err := json.Unmarshal([]byte(spec), j); err != nil {
		return nil, fmt.Errorf("job %s revision %d: %w", name, rev, err)
	}
	s.specMu.Lock()
	s.specs[specKey(name, rev)] = j
	s.specMu.Unlock()
	return j, nil
}

// cachedSpec returns revision rev of job name if jobSpecFrom has decoded it.
func (s *Server) cachedSpec(name string, rev int) (*api.Job, bool) {
	s.specMu.Lock()
	defer s.specMu.Unlock()
	j, ok := s.specs[specKey(name, rev)]
	return j, ok
}

func specKey(name string, rev int) string { return fmt.Sprintf("%s\x00%d", name, rev) }

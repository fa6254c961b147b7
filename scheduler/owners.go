package scheduler

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
)

// ownerAdmin owns what an admin token adds, and every job stored before
// jobs had owners. Only admins see it.
const ownerAdmin = "admin"

// clientOwner is the owner key of what a client token adds: its group
// when it has one (the group's tokens share their jobs), else itself.
func clientOwner(name, group string) string {
	if group != "" {
		return "group:" + group
	}
	return "token:" + name
}

// owner is the owner key of the jobs p adds.
func (p *principal) owner() string {
	if p.kind == kindClient {
		return p.ownerKey
	}
	return ownerAdmin
}

// sees reports whether p may see and change what owner owns: admins see
// everything, a client token what its owner key owns. (The public reader
// sees everything but is never handed a write: see webBackend.reader.)
func (p *principal) sees(owner string) bool {
	return p.kind == kindAdmin || p.kind == kindPublic || (p.kind == kindClient && p.ownerKey == owner)
}

// ownerFilter is the owner a list is restricted to for p; "" lists all.
func (p *principal) ownerFilter() string {
	if p.kind == kindAdmin || p.kind == kindPublic {
		return ""
	}
	return p.owner()
}

// visibleRun answers 404, as for a run that does not exist, when p may not
// see run id: another owner's run is none of its business.
func (s *Server) visibleRun(ctx context.Context, p *principal, id int64) error {
	owner, err := s.st.runOwner(ctx, id)
	if err == nil && !p.sees(owner) {
		return notFound("no run %d", id)
	}
	return err
}

// visibleGroup answers 404, as for a group that does not exist, when p
// may not see group grp.
func (s *Server) visibleGroup(ctx context.Context, p *principal, grp int64) error {
	owner, err := s.st.groupOwner(ctx, grp)
	if err == nil && !p.sees(owner) {
		return notFound("no group %d", grp)
	}
	return err
}

// canReadBlob reports whether p may download blob sha: admins and
// workers any, a client token one it uploaded itself (or its group did)
// or one that a run it sees produced.
func (s *Server) canReadBlob(ctx context.Context, p *principal, sha string) (bool, error) {
	if p.kind != kindClient {
		return true, nil
	}
	return s.st.blobReadable(ctx, p.ownerKey, sha)
}

// grantBlob records that owner uploaded blob sha itself.
func (s *Server) grantBlob(ctx context.Context, owner, sha string) error {
	return s.st.grantBlob(ctx, owner, sha, s.now())
}

// ownerName is how server.toml's [owners] and the wait reasons name an
// owner key: a group's or a client token's name, or "admin".
func ownerName(key string) string {
	if _, name, ok := strings.Cut(key, ":"); ok {
		return name
	}
	return key
}

// ownerConfig is owner key's [owners.NAME] table (the zero table, share 1
// and no limits, for an owner not listed).
func (s *Server) ownerConfig(key string) config.Owner {
	return s.cfg.Owners[ownerName(key)]
}

// maxQueued is owner key's max_queued (0: no bound).
func (s *Server) maxQueued(key string) int { return s.ownerConfig(key).MaxQueued }

// queueFull refuses queueing more runs of owner, which has have runs
// queued of its max_queued limit. 429 without Retry-After: the client
// does not retry it on its own, as waiting does not help until runs end.
func queueFull(owner string, have, limit int) *apiError {
	return errorf(http.StatusTooManyRequests, api.CodeQueueFull,
		"owner %s has %d runs queued: max_queued is %d (server.toml [owners.%s])", ownerName(owner), have, limit, ownerName(owner))
}

// checkPriority refuses a priority above the server's priority_ceiling
// unless p is an admin.
func (s *Server) checkPriority(p *principal, priority int) error {
	if priority > s.cfg.PriorityCeiling && p.kind != kindAdmin {
		return errorf(http.StatusForbidden, api.CodeForbidden,
			"priority %d is above the server's priority_ceiling %d: only an admin may", priority, s.cfg.PriorityCeiling)
	}
	return nil
}

// queueWait explains a queued run's wait by the dispatcher's fairness
// rules: its owner at max_running, or the owner's runs that go first by
// priority. "" when neither holds it back. Both are counted in the
// database, not in this replica's queue, which knows neither the runs
// other replicas leased nor those they queued and handed at once to
// their own workers: the reason holds whichever replica is asked.
func (s *Server) queueWait(ctx context.Context, id int64, owner string) (string, error) {
	w, err := s.st.ownerWait(ctx, id, owner)
	if err != nil {
		return "", err
	}
	switch limit := s.ownerConfig(owner).MaxRunning; {
	case !w.queued:
		return "", nil
	case limit > 0 && w.running >= limit:
		return fmt.Sprintf("owner %s has %d of %d running", ownerName(owner), w.running, limit), nil
	case w.higherPriority > 0:
		return fmt.Sprintf("behind %d runs of the same owner with higher priority", w.higherPriority), nil
	}
	return "", nil
}

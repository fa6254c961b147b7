package scheduler

import (
	"context"
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

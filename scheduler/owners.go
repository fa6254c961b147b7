package scheduler

import (
	"context"
	"database/sql"
	"errors"
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
	var owner string
	err := s.st.queryRow(ctx, `SELECT owner FROM runs WHERE id = ?`, id).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
		return notFound("no run %d", id)
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
	var ok bool
	err := s.st.queryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_grants WHERE owner = ? AND sha256 = ?)
		OR EXISTS (SELECT 1 FROM artifacts a JOIN runs r ON r.id = a.run WHERE a.sha256 = ? AND r.owner = ?)`,
		p.ownerKey, sha, sha, p.ownerKey).Scan(&ok)
	return ok, err
}

// grantBlob records that owner uploaded blob sha itself.
func (s *Server) grantBlob(ctx context.Context, owner, sha string) error {
	return s.st.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`INSERT INTO blob_grants(owner, sha256, created) VALUES (?,?,?) ON CONFLICT DO NOTHING`, owner, sha, ns(s.now()))
		return err
	})
}

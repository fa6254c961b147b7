package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// The store's operations on ownership: who owns a run or a group, and
// which blobs an owner may read.

// runOwner reads run id's owner (a not-found error for no such run).
func (s *store) runOwner(ctx context.Context, id int64) (string, error) {
	var owner string
	err := s.queryRow(ctx, `SELECT owner FROM runs WHERE id = ?`, id).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) {
		return "", notFound("no run %d", id)
	}
	return owner, err
}

// groupOwner reads group grp's owner (a not-found error for no such
// group).
func (s *store) groupOwner(ctx context.Context, grp int64) (string, error) {
	var owner string
	err := s.queryRow(ctx, `SELECT owner FROM groups WHERE id = ?`, grp).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) {
		return "", notFound("no group %d", grp)
	}
	return owner, err
}

// blobReadable reports whether owner uploaded blob sha itself or one of
// its runs produced it.
func (s *store) blobReadable(ctx context.Context, owner, sha string) (bool, error) {
	var ok bool
	err := s.queryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_grants WHERE owner = ? AND sha256 = ?)
		OR EXISTS (SELECT 1 FROM artifacts a JOIN runs r ON r.id = a.run WHERE a.sha256 = ? AND r.owner = ?)`,
		owner, sha, sha, owner).Scan(&ok)
	return ok, err
}

// grantBlob records, at now, that owner uploaded blob sha itself.
func (s *store) grantBlob(ctx context.Context, owner, sha string, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`INSERT INTO blob_grants(owner, sha256, created) VALUES (?,?,?) ON CONFLICT DO NOTHING`, owner, sha, ns(now))
		return err
	})
}

package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/kiln-build/kiln/api"
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

// ownerWaitCount is where a queued run stands among its owner's runs,
// across every replica.
type ownerWaitCount struct {
	queued         bool // the run is queued (else the rest is not read)
	running        int  // the owner's leased and running runs
	higherPriority int  // the owner's queued runs of a higher priority
}

// ownerWait counts, for run id of owner, the owner's running runs and
// its queued runs that go first by priority (runs_owner_state).
func (s *store) ownerWait(ctx context.Context, id int64, owner string) (ownerWaitCount, error) {
	var w ownerWaitCount
	err := s.queryRow(ctx, `SELECT (SELECT count(*) FROM runs b WHERE b.owner = ? AND b.state IN (?, ?)),
		(SELECT count(*) FROM runs o WHERE o.owner = ? AND o.state = ? AND o.priority > r.priority)
		FROM runs r WHERE r.id = ? AND r.state = ?`,
		owner, api.StateLeased, api.StateRunning, owner, api.StateQueued, id, api.StateQueued).Scan(&w.running, &w.higherPriority)
	if errors.Is(err, sql.ErrNoRows) {
		return w, nil
	}
	w.queued = err == nil
	return w, err
}

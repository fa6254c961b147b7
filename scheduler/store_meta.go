package scheduler

import (
	"context"
	"database/sql"
	"errors"

	"github.com/kiln-build/kiln/scheduler/blobs"
)

// The store's operations on the server's own records, and what the server
// needs of the store itself.

// serverID reads the server's identity; found is false before it is made.
func (s *store) serverID(ctx context.Context) (id string, found bool, err error) {
	err = s.queryRow(ctx, `SELECT value FROM server_meta WHERE key = 'id'`).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return id, err == nil, err
}

// makeServerID stores id as the server's identity unless one is stored,
// and answers the stored one: replicas starting together race here, and
// whichever id is stored first is the farm's.
func (s *store) makeServerID(ctx context.Context, id string) (stored string, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		if _, err := tx.Exec(`INSERT INTO server_meta(key, value) VALUES ('id', ?) ON CONFLICT DO NOTHING`, id); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT value FROM server_meta WHERE key = 'id'`).Scan(&stored)
	})
	return stored, err
}

// ping checks that the database answers.
func (s *store) ping(ctx context.Context) error { return s.rd.PingContext(ctx) }

// onRetry sets what to call at each retry of a write after a
// serialization conflict (PostgreSQL; SQLite never retries).
func (s *store) onRetry(fn func()) {
	if s.pg != nil {
		s.pg.retried = fn
	}
}

// uploadLocker is the lock of blob upload sessions shared by replicas
// (PostgreSQL), nil with SQLite, where one server owns the blobs.
func (s *store) uploadLocker() blobs.Locker {
	if s.pg == nil {
		return nil
	}
	return s.pg.locks
}

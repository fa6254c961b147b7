package scheduler

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kiln-build/kiln/api"
)

// The store's side of replicas sharing PostgreSQL: notifications, the
// connections that listen for them or hold the leader lock, and the reads
// of runs other replicas queued.

// notify sends payload on channel to every replica, in the next batch
// (pgBatcher). PostgreSQL only.
func (s *store) notify(channel, payload string) { s.pg.batch.notify(channel, payload) }

// pgConn is a PostgreSQL connection of its own, outside the pool: what
// it listens to and the session locks it takes last as long as it.
type pgConn struct{ conn *pgx.Conn }

// connect opens a pgConn. PostgreSQL only.
func (s *store) connect(ctx context.Context) (*pgConn, error) {
	conn, err := pgx.Connect(ctx, s.pg.url)
	if err != nil {
		return nil, err
	}
	return &pgConn{conn: conn}, nil
}

func (c *pgConn) close(ctx context.Context) { c.conn.Close(context.WithoutCancel(ctx)) }

// listen subscribes to channels.
func (c *pgConn) listen(ctx context.Context, channels ...string) error {
	for _, ch := range channels {
		if _, err := c.conn.Exec(ctx, "LISTEN "+ch); err != nil {
			return err
		}
	}
	return nil
}

// next waits for the next notification on a channel listened to.
func (c *pgConn) next(ctx context.Context) (channel, payload string, err error) {
	n, err := c.conn.WaitForNotification(ctx)
	if err != nil {
		return "", "", err
	}
	return n.Channel, n.Payload, nil
}

// tryLock takes session advisory lock key if it is free.
func (c *pgConn) tryLock(ctx context.Context, key int64) (bool, error) {
	var got bool
	err := c.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got)
	return got, err
}

// ping checks that the connection, and so its session, is alive.
func (c *pgConn) ping(ctx context.Context) error { return c.conn.Ping(ctx) }

// sharedRun is a queued run as another replica's queue gets it, with its
// job revision's spec (JSON).
type sharedRun struct {
	queuedRun
	spec string
}

// queuedAfter lists the queued runs with an id above id.
func (s *store) queuedAfter(ctx context.Context, id int64) ([]sharedRun, error) {
	return s.queuedWhere(ctx, `id > ?`, id)
}

// queuedBefore lists the runs queued before t.
func (s *store) queuedBefore(ctx context.Context, t time.Time) ([]sharedRun, error) {
	return s.queuedWhere(ctx, `queued_at < ?`, ns(t))
}

// queuedWhere lists up to 10000 queued runs matching cond (with one ? for
// arg), by id.
func (s *store) queuedWhere(ctx context.Context, cond string, arg int64) ([]sharedRun, error) {
	rows, err := s.query(ctx, `SELECT r.id, r.queued_at, coalesce(r.grp, 0), r.kind, r.job, r.revision, r.owner, r.priority, r.image, v.spec
		FROM runs r JOIN job_revisions v ON v.name = r.job AND v.revision = r.revision
		WHERE r.state = ? AND r.`+cond+` ORDER BY r.id LIMIT 10000`, api.StateQueued, arg)
	return collect(rows, err, func(row rowScanner) (sharedRun, error) {
		var x sharedRun
		var at int64
		if err := row.Scan(&x.id, &at, &x.grp, &x.kind, &x.job, &x.rev, &x.owner, &x.priority, &x.image, &x.spec); err != nil {
			return x, err
		}
		x.queuedAt = time.Unix(0, at)
		return x, nil
	})
}

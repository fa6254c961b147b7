package scheduler

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// pgStore is the PostgreSQL side of store.
type pgStore struct {
	url     string // for the connections of their own (pgConn, pgLocks)
	db      *sql.DB
	retried func() // called at each retry of a write (a metric)
	locks   *pgLocks
	batch   *pgBatcher
}

// uploadLockClass is the first key of the two-key advisory locks on blob
// upload sessions (a key space apart from the one-key locks above).
const uploadLockClass = 0x6b696c6e

// pgLocks is a blobs.Locker: session advisory locks on a connection of
// its own, held while a request writes an upload session and released
// with the process (or the connection) when it dies. Locks are taken
// without waiting, so one connection serves them all.
type pgLocks struct {
	url  string
	mu   sync.Mutex
	conn *pgx.Conn // nil: connect at the next lock
}

// TryLock implements blobs.Locker.
func (l *pgLocks) TryLock(ctx context.Context, key string) (unlock func(), ok bool, err error) {
	h := fnv.New32a()
	h.Write([]byte(key))
	k := int32(h.Sum32()) //nolint:gosec // G115: any 32 bits will do; a collision only makes a session look busy
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		if l.conn, err = pgx.Connect(ctx, l.url); err != nil {
			return nil, false, fmt.Errorf("database: %w", err)
		}
	}
	conn := l.conn
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, uploadLockClass, k).Scan(&ok); err != nil {
		l.drop(conn)
		return nil, false, fmt.Errorf("database: %w", err)
	}
	if !ok {
		return nil, false, nil
	}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.conn != conn {
			return // the connection broke: the lock went with its session
		}
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, $2)`, uploadLockClass, k); err != nil {
			l.drop(conn)
		}
	}, true, nil
}

// drop closes a connection that failed; its locks go with it. Called
// with l.mu held.
func (l *pgLocks) drop(conn *pgx.Conn) {
	_ = conn.Close(context.Background())
	if l.conn == conn {
		l.conn = nil
	}
}

func (l *pgLocks) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		l.drop(l.conn)
	}
}

// Advisory lock keys: replicas starting together take migrationLock
// around migrations and adminTokenLock around making the admin token, so
// that one does it and the others wait.
const (
	migrationLock  = 0x6b696c6e // "kiln"
	adminTokenLock = migrationLock + 2
)

// exclusive runs fn holding advisory lock key (PostgreSQL); with SQLite,
// where only one server opens the database, it just runs fn.
func (s *store) exclusive(ctx context.Context, key int64, fn func(context.Context) error) error {
	if s.pg == nil {
		return fn(ctx)
	}
	conn, err := s.pg.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer unlock(ctx, conn, key)
	return fn(ctx)
}

// openPGStore connects to the PostgreSQL database at url and migrates it.
func openPGStore(ctx context.Context, url string) (*store, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// Transactions hold a connection across round trips: enough of them
	// that requests rarely queue for one, few enough for max_connections
	// (100 by default) with a few replicas.
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	// A connection PostgreSQL dropped (a restart) is replaced rather than
	// kept around failing.
	db.SetConnMaxIdleTime(time.Minute)
	if err := pgMigrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	return &store{pg: &pgStore{url: url, db: db, retried: func() {}, locks: &pgLocks{url: url}, batch: newPGBatcher(db)}, rd: db, wr: db}, nil
}

func pgMigrate(ctx context.Context, db *sql.DB) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// Unlocked explicitly: the connection goes back to the pool.
	defer unlock(ctx, conn, migrationLock)
	return migrate(conn, "migrations/postgres", true)
}

// unlock releases advisory lock key held by conn's session before conn
// goes back to the pool. An error means the connection broke, and the
// lock went with its session: nothing is left to release.
func unlock(ctx context.Context, conn *sql.Conn, key int64) {
	_, _ = conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key)
}

func (p *pgStore) close() error {
	p.batch.close()
	p.locks.close()
	return p.db.Close()
}

// maxRetries bounds the retries of one write after serialization conflicts.
const maxRetries = 200

// write runs fn in its own SERIALIZABLE transaction, again from the start
// when PostgreSQL reports a conflict with a concurrent one (fn must set
// its results from scratch each time, as every write does).
func (p *pgStore) write(ctx context.Context, s *store, fn func(tx *wtx) error) error {
	return p.writeIso(ctx, s, sql.LevelSerializable, fn)
}

func (p *pgStore) writeIso(ctx context.Context, s *store, iso sql.IsolationLevel, fn func(tx *wtx) error) error {
	for try := 0; ; try++ {
		err := p.writeOnce(ctx, s, iso, fn)
		if err == nil || !retryable(err) || try == maxRetries {
			return err
		}
		p.retried()
		// Back off a little, more each time and at random, so that the
		// conflicting writers do not meet again at once.
		select {
		case <-time.After(time.Duration(rand.Int64N(int64(min(try+1, 20)) * int64(time.Millisecond)))): //nolint:gosec // G404: jitter, no secret
		case <-ctx.Done():
			return err
		}
	}
}

func (p *pgStore) writeOnce(ctx context.Context, s *store, iso sql.IsolationLevel, fn func(tx *wtx) error) (err error) {
	tx, err := p.db.BeginTx(ctx, &sql.TxOptions{Isolation: iso})
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
		if err != nil {
			_ = tx.Rollback() // err is what to report; a failed rollback ends with the connection
		}
	}()
	if err := fn(&wtx{tx: tx, st: s, ctx: ctx}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// retryable reports a serialization failure or deadlock: the transaction
// was rolled back and may simply run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// dbUnavailable reports an error of a database that cannot be reached
// or is shutting down or starting, as opposed to one refusing a query.
func dbUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01-57P03: shutdown, crash,
		// cannot connect now.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ce *pgconn.ConnectError
	var op *net.OpError
	return errors.As(err, &ce) || errors.As(err, &op) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || pgconn.SafeToRetry(err) || pgconn.Timeout(err)
}

// rebind turns ? placeholders (outside quoted strings) into $1, $2, ...
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// pgArgs turns bools into 0/1: the schema keeps SQLite's integer flags so
// that both dialects compare them the same way.
func pgArgs(args []any) []any {
	for i, a := range args {
		if v, ok := a.(bool); ok {
			if v {
				args[i] = int64(1)
			} else {
				args[i] = int64(0)
			}
		}
	}
	return args
}

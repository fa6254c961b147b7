package scheduler

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver
)

//go:embed migrations/*.sql migrations/postgres/*.sql
var migrations embed.FS

// store is the database, SQLite or PostgreSQL; queries are written once,
// with ? placeholders, and rebound for PostgreSQL.
//
// SQLite: reads use a pool; every write goes through one goroutine that
// commits whatever writes are waiting in a single transaction (group
// commit), each write inside its own savepoint so one failing write does
// not undo the others.
//
// PostgreSQL: several servers may share the database, so no process can
// serialize the writes; each write is its own SERIALIZABLE transaction,
// retried when PostgreSQL reports a serialization conflict, which keeps the
// read-then-update writes as safe as under SQLite's single writer.
type store struct {
	pg     *pgStore // nil for SQLite
	rd     *sql.DB
	wr     *sql.DB
	writes chan *writeReq
	done   chan struct{}
	// Prepared statements by query text: the driver re-parses SQL on every
	// unprepared call, which costs more than running it.
	rdStmts sync.Map
	wrStmts sync.Map
}

type writeReq struct {
	fn   func(tx *wtx) error
	errc chan error
}

// wtx is a write transaction whose Exec/Query/QueryRow use prepared
// statements. On PostgreSQL tx is nil in a write of writeOne: each
// statement then commits by itself, sent with ctx.
type wtx struct {
	tx  *sql.Tx
	st  *store
	ctx context.Context
}

func (t *wtx) stmt(q string) (*sql.Stmt, error) {
	if t.st.pg != nil {
		return nil, errors.New("no prepared statements on PostgreSQL")
	}
	st, err := prepared(&t.st.wrStmts, t.st.wr, q)
	if err != nil {
		return nil, err
	}
	return t.tx.Stmt(st), nil
}

func (t *wtx) Exec(q string, args ...any) (sql.Result, error) {
	if t.st.pg != nil {
		if t.tx == nil {
			return t.st.pg.db.ExecContext(t.ctx, rebind(q), pgArgs(args)...)
		}
		return t.tx.Exec(rebind(q), pgArgs(args)...)
	}
	st, err := t.stmt(q)
	if err != nil {
		return nil, err
	}
	return st.Exec(args...)
}

func (t *wtx) Query(q string, args ...any) (*sql.Rows, error) {
	if t.st.pg != nil {
		if t.tx == nil {
			return t.st.pg.db.QueryContext(t.ctx, rebind(q), pgArgs(args)...)
		}
		return t.tx.Query(rebind(q), pgArgs(args)...)
	}
	st, err := t.stmt(q)
	if err != nil {
		return nil, err
	}
	return st.Query(args...)
}

// rowScanner is a *sql.Row, or a row of a write sent in a batch.
type rowScanner interface{ Scan(dest ...any) error }

// batchedRow is a statement of a write of writeOne on PostgreSQL: it runs
// in the next batch (pgBatcher) when scanned.
type batchedRow struct {
	t    *wtx
	q    string
	args []any
}

func (r batchedRow) Scan(dest ...any) error {
	return r.t.st.pg.batch.queryRow(r.t.ctx, r.q, r.args, dest)
}

// QueryRow panics if preparing failed, which can only be a bug in a
// query text, so that callers can Scan its row directly.
func (t *wtx) QueryRow(q string, args ...any) rowScanner {
	if t.st.pg != nil {
		if t.tx == nil {
			return batchedRow{t: t, q: rebind(q), args: pgArgs(args)}
		}
		return t.tx.QueryRow(rebind(q), pgArgs(args)...)
	}
	st, err := t.stmt(q)
	if err != nil {
		panic(fmt.Sprintf("prepare %q: %v", q, err))
	}
	return st.QueryRow(args...)
}

func prepared(cache *sync.Map, db *sql.DB, q string) (*sql.Stmt, error) {
	if v, ok := cache.Load(q); ok {
		return v.(*sql.Stmt), nil
	}
	st, err := db.Prepare(q)
	if err != nil {
		return nil, err
	}
	if v, loaded := cache.LoadOrStore(q, st); loaded {
		st.Close()
		return v.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow runs a read through a prepared statement.
func (s *store) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if s.pg != nil {
		return s.rd.QueryRowContext(ctx, rebind(q), pgArgs(args)...)
	}
	st, err := prepared(&s.rdStmts, s.rd, q)
	if err != nil {
		panic(fmt.Sprintf("prepare %q: %v", q, err))
	}
	return st.QueryRowContext(ctx, args...)
}

func (s *store) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if s.pg != nil {
		return s.rd.QueryContext(ctx, rebind(q), pgArgs(args)...)
	}
	st, err := prepared(&s.rdStmts, s.rd, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// maxBatch bounds one group commit.
const maxBatch = 512

func openStore(path, synchronous string) (*store, error) {
	dsn := "file:" + filepath.ToSlash(path) + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(" + synchronous + ")&_pragma=foreign_keys(1)"
	wr, err := sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// Only the writer goroutine writes; the second connection lets a
	// statement be prepared (db.Prepare) while a transaction holds the first.
	wr.SetMaxOpenConns(2)
	wr.SetMaxIdleConns(2)
	if err := migrate(wr, "migrations", false); err != nil {
		wr.Close()
		return nil, err
	}
	rd, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		wr.Close()
		return nil, err
	}
	rd.SetMaxOpenConns(8)
	s := &store{rd: rd, wr: wr, writes: make(chan *writeReq, maxBatch), done: make(chan struct{})}
	go s.writer()
	return s, nil
}

func (s *store) close() error {
	if s.pg != nil {
		return s.pg.close()
	}
	close(s.writes)
	<-s.done
	for _, m := range []*sync.Map{&s.rdStmts, &s.wrStmts} {
		m.Range(func(_, v any) bool { v.(*sql.Stmt).Close(); return true })
	}
	return errors.Join(s.rd.Close(), s.wr.Close())
}

// write runs fn in a write transaction and returns once it is committed
// (or failed). ctx only bounds the wait to be queued: a write that was
// queued is committed even if ctx ends meanwhile.
func (s *store) write(ctx context.Context, fn func(tx *wtx) error) error {
	if s.pg != nil {
		return s.pg.write(ctx, s, fn)
	}
	r := &writeReq{fn: fn, errc: make(chan error, 1)}
	select {
	case s.writes <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-r.errc
}

// writeRC is write for writes that need no SERIALIZABLE on PostgreSQL:
// their reads lock the rows they then change (forUpdate), or they only
// change rows by conditional UPDATEs. Under SERIALIZABLE the many
// concurrent writes of workers (results, consoles, heartbeats) would
// mostly meet as conflicts and retries.
func (s *store) writeRC(ctx context.Context, fn func(tx *wtx) error) error {
	if s.pg != nil {
		return s.pg.writeIso(ctx, s, sql.LevelReadCommitted, fn)
	}
	return s.write(ctx, fn)
}

// writeOne is write for writes that change the database with one
// statement, whatever else they read: on PostgreSQL each of their
// QueryRow statements runs in the next batch of such statements
// (pgBatcher: one round trip and one commit for many, READ COMMITTED),
// without the BEGIN and COMMIT round trips of a transaction of its own;
// such a write is as atomic as its one changing statement, whose WHERE
// re-checks what it depends on.
func (s *store) writeOne(ctx context.Context, fn func(tx *wtx) error) error {
	if s.pg == nil {
		return s.write(ctx, fn)
	}
	for try := 0; ; try++ {
		err := fn(&wtx{st: s, ctx: ctx})
		if err == nil || !retryable(err) || try == maxRetries {
			return err
		}
		s.pg.retried()
	}
}

// forUpdate ends a SELECT whose rows the transaction changes next: on
// PostgreSQL it locks them; SQLite has one writer and no such clause.
func (t *wtx) forUpdate() string {
	if t.st.pg != nil {
		return " FOR UPDATE"
	}
	return ""
}

// skipLocked ends a SELECT of rows the statement changes next: on
// PostgreSQL it locks them and leaves out the rows another transaction
// holds (instead of waiting for it); SQLite has one writer.
func (t *wtx) skipLocked() string {
	if t.st.pg != nil {
		return " FOR UPDATE SKIP LOCKED"
	}
	return ""
}

// keyShare ends a SELECT of a row that must not be deleted before the
// transaction ends (PostgreSQL); it does not block updates of the row.
func (t *wtx) keyShare() string {
	if t.st.pg != nil {
		return " FOR KEY SHARE"
	}
	return ""
}

func (s *store) writer() {
	defer close(s.done)
	batch := make([]*writeReq, 0, maxBatch)
	for r := range s.writes {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.writes:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

func (s *store) commit(batch []*writeReq) {
	errs := make([]error, len(batch))
	tx, err := s.wr.Begin()
	if err == nil {
		w := &wtx{tx: tx, st: s, ctx: context.Background()}
		for i, r := range batch {
			errs[i] = runSavepoint(w, r.fn)
		}
		err = tx.Commit()
	}
	for i, r := range batch {
		if err != nil {
			r.errc <- fmt.Errorf("database: %w", err)
		} else {
			r.errc <- errs[i]
		}
	}
}

func runSavepoint(tx *wtx, fn func(*wtx) error) (err error) {
	if _, err := tx.Exec("SAVEPOINT w"); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
		if err != nil {
			if _, rerr := tx.Exec("ROLLBACK TO w"); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		if _, rerr := tx.Exec("RELEASE w"); rerr != nil && err == nil {
			err = rerr
		}
	}()
	return fn(tx)
}

// rebindIf is rebind on PostgreSQL (pg), q unchanged on SQLite.
func rebindIf(pg bool, q string) string {
	if pg {
		return rebind(q)
	}
	return q
}

// execer is what migrate needs of a *sql.DB or a *sql.Conn.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// migrate applies the embedded migrations in dir not yet applied, each in
// its own transaction together with its version record; pg tells the
// dialect.
func migrate(db execer, dir string, pg bool) error {
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, dir+"/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		v, err := strconv.Atoi(strings.SplitN(filepath.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", name)
		}
		var n int
		if err := db.QueryRowContext(ctx, rebindIf(pg, `SELECT count(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if n > 0 {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(string(body)); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migration %s: %w", name, err)
		}
		if _, err := tx.Exec(rebindIf(pg, `INSERT INTO schema_migrations(version) VALUES (?)`), v); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %s: %w", name, err)
		}
	}
	return nil
}

// ns is how the store keeps a time: Unix nanoseconds.
func ns(t time.Time) int64 { return t.UnixNano() }

func fromNS(v sql.NullInt64) time.Time {
	if !v.Valid || v.Int64 == 0 {
		return time.Time{}
	}
	return time.Unix(0, v.Int64).UTC()
}

// postgres reports whether the store is PostgreSQL (shared by replicas).
func (s *store) postgres() bool { return s.pg != nil }

// collect reads every row of rows with scan and closes rows; err is the
// query's, returned as is. The answer is never nil: an empty list is
// JSON [], not null.
func collect[T any](rows *sql.Rows, err error, scan func(rowScanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		x, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}

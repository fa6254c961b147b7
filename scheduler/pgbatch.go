package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgBatcher sends the one-statement writes of many requests (writeOne:
// claims, results, executes) to PostgreSQL together: one network round
// trip and one commit for all of them, PostgreSQL's group commit done on
// this side, much as SQLite's writer goroutine does. Each batch is one
// implicit transaction; a statement that fails aborts it, and then every
// statement of the batch runs again by itself, so that one failing write
// does not fail the others.
type pgBatcher struct {
	db   *sql.DB
	reqs chan *batchReq
	done chan struct{} // closed by close
}

// batchReq is one statement returning at most one row, scanned into
// dest; err gets sql.ErrNoRows for no row.
type batchReq struct {
	q    string
	args []any
	dest []any
	err  chan error
}

const (
	// pgBatchers batches are in flight at once: one fills while another
	// waits for its commit.
	pgBatchers = 2
	// maxPGBatch bounds the statements of one batch.
	maxPGBatch = 256
	// batchTimeout bounds a batch's round trip, so that a database gone
	// silent fails its requests instead of holding them.
	batchTimeout = time.Minute
)

func newPGBatcher(db *sql.DB) *pgBatcher {
	b := &pgBatcher{db: db, reqs: make(chan *batchReq, maxPGBatch), done: make(chan struct{})}
	for range pgBatchers {
		go b.run()
	}
	return b
}

// close stops the batchers; a write queued after it fails.
func (b *pgBatcher) close() { close(b.done) }

var errStoreClosed = errors.New("database closed")

// queryRow runs q in the next batch and scans its row into dest. The
// statement commits (or not) with its batch, whatever becomes of ctx
// meanwhile; ctx only bounds the wait to be queued.
func (b *pgBatcher) queryRow(ctx context.Context, q string, args []any, dest []any) error {
	r := &batchReq{q: q, args: args, dest: dest, err: make(chan error, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return errStoreClosed
	}
	select {
	case err := <-r.err:
		return err
	case <-b.done:
		// Whether the statement ran is unknown, as when a connection
		// breaks.
		return errStoreClosed
	}
}

func (b *pgBatcher) run() {
	batch := make([]*batchReq, 0, maxPGBatch)
	for {
		select {
		case <-b.done:
			return
		case r := <-b.reqs:
			batch = append(batch[:0], r)
		}
	fill:
		for len(batch) < maxPGBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.send(batch)
	}
}

// send runs batch and answers its requests.
func (b *pgBatcher) send(batch []*batchReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	if len(batch) == 1 {
		batch[0].err <- b.alone(ctx, batch[0])
		return
	}
	errs := make([]error, len(batch))
	err := b.together(ctx, batch, errs)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// A statement failed and the batch rolled back: each on its own.
		for _, r := range batch {
			r.err <- b.alone(ctx, r)
		}
		return
	}
	for i, r := range batch {
		if err != nil {
			r.err <- err
		} else {
			r.err <- errs[i]
		}
	}
}

// alone runs one request as a statement of its own.
func (b *pgBatcher) alone(ctx context.Context, r *batchReq) error {
	rows, err := b.db.QueryContext(ctx, r.q, r.args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(r.dest...); err != nil {
		return err
	}
	return rows.Close()
}

// together sends batch in one round trip; errs gets each request's
// outcome, valid when the batch as a whole succeeded (nil error).
func (b *pgBatcher) together(ctx context.Context, batch []*batchReq, errs []error) error {
	conn, err := b.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		var pb pgx.Batch
		for _, r := range batch {
			pb.Queue(r.q, r.args...)
		}
		br := pc.SendBatch(ctx, &pb)
		for i, r := range batch {
			rows, err := br.Query()
			if err != nil {
				_ = br.Close()
				return err
			}
			errs[i] = scanOne(rows, r.dest)
			rows.Close()
			if err := rows.Err(); err != nil {
				_ = br.Close()
				return err
			}
		}
		return br.Close()
	})
}

// scanOne scans the first row of rows into dest with database/sql's
// conversions (integer flags into bools, for one), which pgx's own
// scanning does not make: sql.ErrNoRows for none.
func scanOne(rows pgx.Rows, dest []any) error {
	if !rows.Next() {
		if rows.Err() != nil {
			return nil // reported by the caller's rows.Err
		}
		return sql.ErrNoRows
	}
	vals, err := rows.Values()
	if err != nil {
		return err
	}
	if len(vals) != len(dest) {
		return fmt.Errorf("scan: %d columns into %d destinations", len(vals), len(dest))
	}
	for i, v := range vals {
		if err := assign(dest[i], v); err != nil {
			return fmt.Errorf("scan column %d: %w", i, err)
		}
	}
	return nil
}

// assign stores v, a value pgx decoded, in dst as database/sql would.
func assign(dst, v any) error {
	switch x := v.(type) {
	case int16:
		v = int64(x)
	case int32:
		v = int64(x)
	}
	if sc, ok := dst.(sql.Scanner); ok {
		return sc.Scan(v)
	}
	switch d := dst.(type) {
	case *string:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%T into *string", v)
		}
		*d = s
	case *int64:
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("%T into *int64", v)
		}
		*d = n
	case *int:
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("%T into *int", v)
		}
		*d = int(n)
	case *bool:
		switch x := v.(type) {
		case bool:
			*d = x
		case int64:
			*d = x != 0
		default:
			return fmt.Errorf("%T into *bool", v)
		}
	default:
		return fmt.Errorf("no conversion into %T", dst)
	}
	return nil
}

package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
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
//
// Notifications (notify) ride along: those waiting when a batch leaves
// go with it as one more statement, committed in its transaction, so
// that they cost neither a round trip nor a commit of their own; only
// when no batch leaves within noteDelay do they go by themselves.
type pgBatcher struct {
	db   *sql.DB
	reqs chan *batchReq
	done chan struct{} // closed by close

	mu       sync.Mutex
	chans    []string // notifications waiting for a batch
	payloads []string
	kick     chan struct{} // a notification has waited noteDelay
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
	// maxPGBatch bounds the statements of one batch.
	maxPGBatch = 256
	// batchTimeout bounds a batch's round trip, so that a database gone
	// silent fails its requests instead of holding them.
	batchTimeout = time.Minute
	// maxNotes bounds the notifications waiting for a batch; more are
	// dropped (waiters poll, so a lost notification delays, never loses).
	maxNotes = 4096
	// noteDelay is how long a notification waits for a batch to ride
	// with before it goes alone.
	noteDelay = 2 * time.Millisecond
)

func newPGBatcher(db *sql.DB) *pgBatcher {
	b := &pgBatcher{db: db, reqs: make(chan *batchReq, maxPGBatch), done: make(chan struct{}), kick: make(chan struct{}, 1)}
	// One batch at a time: the writes arriving while it commits make the
	// next one. With two in flight the batches were half as big, and a
	// run cost the server and PostgreSQL 15-20% more CPU, for no more
	// runs/s (docs/benchmarks.md).
	go b.run()
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

// notify sends payload on channel with the next batch, after the writes
// committed so far.
func (b *pgBatcher) notify(channel, payload string) {
	b.mu.Lock()
	first := len(b.chans) == 0
	if len(b.chans) < maxNotes {
		b.chans, b.payloads = append(b.chans, channel), append(b.payloads, payload)
	}
	b.mu.Unlock()
	if first {
		time.AfterFunc(noteDelay, func() {
			select {
			case b.kick <- struct{}{}:
			default:
			}
		})
	}
}

// notes returns the statement sending the waiting notifications, nil
// for none.
func (b *pgBatcher) notes() *batchReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.chans) == 0 {
		return nil
	}
	r := &batchReq{q: `SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS t(c, p)`,
		args: []any{b.chans, b.payloads}, dest: []any{new(int64)}, err: make(chan error, 1)}
	b.chans, b.payloads = nil, nil
	return r
}

func (b *pgBatcher) run() {
	batch := make([]*batchReq, 0, maxPGBatch+1)
	for {
		batch = batch[:0]
		select {
		case <-b.done:
			return
		case r := <-b.reqs:
			batch = append(batch, r)
		case <-b.kick:
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
		// The notifications are of writes committed before: whether this
		// batch commits or fails, they are due.
		if n := b.notes(); n != nil {
			batch = append(batch, n)
		}
		if len(batch) > 0 {
			b.send(batch)
		}
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

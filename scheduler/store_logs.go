package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on runs' consoles.

// logAppend is console bytes of the current attempt of run id at offset,
// sent by host under fence; bytes beyond consoleCap are counted, not
// stored.
type logAppend struct {
	host       string
	id         int64
	fence      string
	offset     int64
	data       []byte
	consoleCap int64
	now        time.Time
}

// appendLog stores a's bytes the console lacks, if a.host holds the run's
// lease with a.fence, and answers the console's length; a gap is a
// conflict error carrying the length.
func (s *store) appendLog(ctx context.Context, a logAppend) (length int64, err error) {
	id, fence, host, offset, data, now := a.id, a.fence, a.host, a.offset, a.data, a.now
	err = s.writeRC(ctx, func(tx *wtx) error {
		var state, f, h string
		var attempt int
		var logLen, stored int64
		err := tx.QueryRow(`SELECT state, coalesce(fence, ''), coalesce(host, ''), attempt, log_len, log_stored FROM runs WHERE id = ?`+tx.forUpdate(), id).
			Scan(&state, &f, &h, &attempt, &logLen, &stored)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("no run %d", id)
		}
		if err != nil {
			return err
		}
		if f == "" || f != fence || h != host || api.Terminal(state) {
			return staleFence(id)
		}
		length = logLen
		if offset > logLen || offset < 0 {
			e := errorf(http.StatusConflict, api.CodeLogOffset, "run %d: append at offset %d, but the log has %d bytes", id, offset, logLen)
			e.length = &length
			return e
		}
		skip := logLen - offset
		if skip >= int64(len(data)) {
			return nil
		}
		// A retried try (PostgreSQL READ COMMITTED after a conflict)
		// starts from the request's bytes again: data itself is never cut.
		fresh := data[skip:]
		keep := min(int64(len(fresh)), max(0, a.consoleCap-stored))
		if keep > 0 {
			if _, err := tx.Exec(`INSERT INTO run_logs(run, attempt, off, data) VALUES (?,?,?,?)`, id, attempt, stored, fresh[:keep]); err != nil {
				return err
			}
		}
		length = logLen + int64(len(fresh))
		_, err = tx.Exec(`UPDATE runs SET log_len = ?, log_stored = ?, state = ?, started = coalesce(started, ?) WHERE id = ?`,
			length, stored+keep, api.StateRunning, ns(now), id)
		return err
	})

	return length, err
}

// logChunkAt is the offset of the stored chunk holding byte ? of a run
// attempt's console (parameters: run, attempt, offset). It is found on
// the primary key alone: a condition on length(data) would read every
// chunk's blob before the offset, 64 MiB for the tail of a full console.
const logChunkAt = `(SELECT coalesce(max(off), 0) FROM run_logs WHERE run = ? AND attempt = ? AND off <= ?)`

// logState reads run id's state and attempt, and its current attempt's
// console length and how much of it is stored.
func (s *store) logState(ctx context.Context, id int64) (state string, attempt int, logLen, stored int64, err error) {
	err = s.queryRow(ctx, `SELECT state, attempt, log_len, log_stored FROM runs WHERE id = ?`, id).Scan(&state, &attempt, &logLen, &stored)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, 0, 0, notFound("no run %d", id)
	}
	return state, attempt, logLen, stored, err
}

// attemptLogSize reads how much of run id's attempt's console is stored.
func (s *store) attemptLogSize(ctx context.Context, id int64, attempt int) (int64, error) {
	var size int64
	err := s.queryRow(ctx, `SELECT coalesce(max(off + length(data)), 0) FROM run_logs WHERE run = ? AND attempt = ?`, id, attempt).Scan(&size)
	return size, err
}

// logChunks calls fn with the stored chunks of run id's attempt's console
// from the one holding byte offset on, before end (-1: to the last), in
// order, until fn answers false or an error.
func (s *store) logChunks(ctx context.Context, id int64, attempt int, offset, end int64, fn func(off int64, data []byte) (bool, error)) error {
	q := `SELECT off, data FROM run_logs WHERE run = ? AND attempt = ? AND off >= ` + logChunkAt + ` ORDER BY off`
	args := []any{id, attempt, id, attempt, offset}
	if end >= 0 {
		q = `SELECT off, data FROM run_logs WHERE run = ? AND attempt = ? AND off >= ` + logChunkAt + ` AND off < ? ORDER BY off`
		args = append(args, end)
	}
	rows, err := s.query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var off int64
		var data []byte
		if err := rows.Scan(&off, &data); err != nil {
			return err
		}
		more, err := fn(off, data)
		if err != nil || !more {
			return err
		}
	}
	return rows.Err()
}

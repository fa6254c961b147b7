package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on runs, their artifacts and their counts.

const runCols = `id, job, revision, state, attempt, trigger_kind, coalesce(host, ''), created, started, finished,
	cancel_asked, exit_code, signal, timed_out, error, log_stored, log_len > log_stored,
	coalesce(grp, 0), member, variations, checks, snapshot, host_facts, kind, task, priority, leased, image, image_digest, phase`

func scanRun(sc interface{ Scan(...any) error }) (*api.Run, error) {
	var r api.Run
	var id int64
	var created, started, finished, exit, leased sql.NullInt64
	var grp int64
	var variations, checks, facts, task string
	if err := sc.Scan(&id, &r.Job, &r.Revision, &r.State, &r.Attempt, &r.Trigger, &r.Host, &created, &started, &finished,
		&r.CancelAsked, &exit, &r.Signal, &r.TimedOut, &r.Error, &r.LogSize, &r.LogTruncated,
		&grp, &r.Member, &variations, &checks, &r.Snapshot, &facts, &r.Kind, &task, &r.Priority, &leased, &r.Image, &r.ImageDigest, &r.Phase); err != nil {
		return nil, err
	}
	if r.State != api.StateLeased && r.State != api.StateRunning {
		r.Phase = "" // what the host did before the script, for a run whose lease ended
	}
	if task != "" {
		r.Diffoscope = &api.DiffoscopeTask{}
		if err := json.Unmarshal([]byte(task), r.Diffoscope); err != nil {
			return nil, fmt.Errorf("run %d task: %w", id, err)
		}
	}
	if grp != 0 {
		r.Group = itoa(grp)
	}
	// These columns are written by the server only, from values it
	// decoded; a failure to read them back is a bug worth surfacing.
	if err := json.Unmarshal([]byte(variations), &r.Variations); err != nil {
		return nil, fmt.Errorf("run %d variations: %w", id, err)
	}
	if len(r.Variations) == 0 {
		r.Variations = nil
	}
	if err := json.Unmarshal([]byte(checks), &r.Checks); err != nil {
		return nil, fmt.Errorf("run %d checks: %w", id, err)
	}
	if facts != "" {
		r.HostFacts = &api.Facts{}
		if err := json.Unmarshal([]byte(facts), r.HostFacts); err != nil {
			return nil, fmt.Errorf("run %d host facts: %w", id, err)
		}
	}
	r.ID = strconv.FormatInt(id, 10)
	r.Created, r.Leased, r.Started, r.Finished = fromNS(created), fromNS(leased), fromNS(started), fromNS(finished)
	if exit.Valid {
		c := int(exit.Int64)
		r.ExitCode = &c
	}
	return &r, nil
}

// run reads run id (a not-found error for none).
func (s *store) run(ctx context.Context, id int64) (*api.Run, error) {
	r, err := scanRun(s.queryRow(ctx, `SELECT `+runCols+` FROM runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("no run %d", id)
	}
	return r, err
}

// runQuery selects runs, newest first. Empty fields do not filter.
type runQuery struct {
	job    string
	group  int64
	host   string
	states []string
	before int64  // only runs with a smaller ID (paging)
	limit  int    // default 100, at most 10000
	owner  string // only runs of this owner (see principal.ownerFilter)
}

// runs lists the runs rq selects.
func (s *store) runs(ctx context.Context, rq runQuery) ([]api.Run, error) {
	limit := rq.limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 10000)
	var where []string
	var args []any
	add := func(clause string, arg any) {
		where = append(where, clause)
		args = append(args, arg)
	}
	// Each filter is one clause with one parameter (lists as JSON), so the
	// statement cache holds one statement per combination of filters.
	switch {
	case rq.group != 0:
		add(`grp = ?`, rq.group)
	case rq.job != "":
		add(`job = ? AND `+incarnation, rq.job)
	}
	if rq.host != "" {
		add(`host = ?`, rq.host)
	}
	switch len(rq.states) {
	case 0:
	case 1:
		add(`state = ?`, rq.states[0])
	default:
		// One placeholder per state: json_each over an array is SQLite's
		// alone (PostgreSQL's json_each takes objects).
		where = append(where, `state IN (?`+strings.Repeat(`, ?`, len(rq.states)-1)+`)`)
		for _, st := range rq.states {
			args = append(args, st)
		}
	}
	if rq.before > 0 {
		add(`id < ?`, rq.before)
	}
	if rq.owner != "" {
		add(`owner = ?`, rq.owner)
	}
	q := `SELECT ` + runCols + ` FROM runs`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.query(ctx, q, args...)
	return collect(rows, err, func(row rowScanner) (api.Run, error) {
		r, err := scanRun(row)
		if err != nil {
			return api.Run{}, err
		}
		return *r, nil
	})
}

// artifacts lists run id's artifacts by path.
func (s *store) artifacts(ctx context.Context, id int64) ([]api.Artifact, error) {
	rows, err := s.query(ctx, `SELECT path, size, mode, sha256 FROM artifacts WHERE run = ? ORDER BY path`, id)
	return collect(rows, err, func(row rowScanner) (api.Artifact, error) {
		var a api.Artifact
		if err := row.Scan(&a.Path, &a.Size, &a.Mode, &a.SHA256); err != nil {
			return a, err
		}
		return a, nil
	})
}

// cancelRun ends run id at now if it is queued (wasQueued), or asks its
// worker to cancel it (cancel_asked) if it is leased or running; an ended
// run is a conflict error.
func (s *store) cancelRun(ctx context.Context, id int64, now time.Time) (wasQueued bool, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		var state string
		err := tx.QueryRow(`SELECT state FROM runs WHERE id = ?`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("no run %d", id)
		}
		if err != nil {
			return err
		}
		switch {
		case state == api.StateQueued || state == api.StateDepWait:
			wasQueued = true
			_, err = tx.Exec(`UPDATE runs SET state = ?, cancel_asked = 1, finished = ? WHERE id = ?`, api.StateCancelled, ns(now), id)
		case api.Terminal(state):
			return errorf(http.StatusConflict, api.CodeFinished, "run %d already ended (%s)", id, state)
		default:
			_, err = tx.Exec(`UPDATE runs SET cancel_asked = 1 WHERE id = ?`, id)
		}
		return err
	})
	return wasQueued, err
}

// incarnation is the condition that a row of runs (unaliased) belongs to
// the current incarnation of its job (see addJob), or to any while the
// name has no job: a job removed and added again, maybe by another owner,
// lists none of the runs of the removed one by its name.
const incarnation = `runs.revision >= coalesce((SELECT inc.first_revision FROM jobs inc WHERE inc.name = runs.job), 0)`

// runsByState counts the runs in each state.
func (s *store) runsByState(ctx context.Context) (map[string]int64, error) {
	rows, err := s.query(ctx, `SELECT state, count(*) FROM runs GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byState := map[string]int64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		byState[st] = n
	}
	return byState, rows.Err()
}

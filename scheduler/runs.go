package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/queue"
)

const runCols = `id, job, revision, state, attempt, trigger_kind, coalesce(host, ''), created, started, finished,
	cancel_asked, exit_code, signal, timed_out, error, log_stored, log_len > log_stored,
	coalesce(grp, 0), member, variations, checks, snapshot, host_facts, kind, task`

func scanRun(sc interface{ Scan(...any) error }) (*api.Run, error) {
	var r api.Run
	var id int64
	var created, started, finished, exit sql.NullInt64
	var grp int64
	var variations, checks, facts, task string
	if err := sc.Scan(&id, &r.Job, &r.Revision, &r.State, &r.Attempt, &r.Trigger, &r.Host, &created, &started, &finished,
		&r.CancelAsked, &exit, &r.Signal, &r.TimedOut, &r.Error, &r.LogSize, &r.LogTruncated,
		&grp, &r.Member, &variations, &checks, &r.Snapshot, &facts, &r.Kind, &task); err != nil {
		return nil, err
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
	r.Created, r.Started, r.Finished = fromNS(created), fromNS(started), fromNS(finished)
	if exit.Valid {
		c := int(exit.Int64)
		r.ExitCode = &c
	}
	return &r, nil
}

// parseRunID accepts the decimal run IDs the API hands out.
func parseRunID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, notFound("no run %q", s)
	}
	return id, nil
}

func (s *Server) getRun(ctx context.Context, id int64) (*api.Run, error) {
	r, err := scanRun(s.st.queryRow(ctx, `SELECT `+runCols+` FROM runs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("no run %d", id)
	}
	if err != nil {
		return nil, err
	}
	if r.Artifacts, err = s.listArtifacts(ctx, id); err != nil {
		return nil, err
	}
	if r.State == api.StateQueued && r.Kind != api.KindDiffoscope {
		if r.Waiting, err = s.waiting(ctx, r.Job, r.Revision); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// waiting says why a queued run of job revision rev is not leased, judged
// by the facts the enrolled hosts last sent.
func (s *Server) waiting(ctx context.Context, job string, rev int) (string, error) {
	j, err := s.jobSpec(ctx, job, rev)
	if err != nil {
		return "", err
	}
	hosts, err := s.listHosts(ctx, "")
	if err != nil {
		return "", err
	}
	if len(hosts) == 0 {
		return "no host is enrolled", nil
	}
	var able, drained, reasons, limits []string
	for _, h := range hosts {
		why, over := queue.Refusal(j, &h.Facts)
		switch {
		case why == "" && h.Drained:
			drained = append(drained, h.Name)
		case why == "":
			able = append(able, h.Name)
		default:
			reasons = append(reasons, h.Name+": "+why)
			if over {
				limits = append(limits, why)
			}
		}
	}
	switch {
	case len(able) > 0:
		return "for a free slot on " + strings.Join(able, ", "), nil
	case len(drained) > 0:
		return "the hosts that can run it are drained (" + strings.Join(drained, ", ") + ")", nil
	case len(limits) == len(hosts) && len(slices.Compact(slices.Sorted(slices.Values(limits)))) == 1:
		return "no enrolled host allows " + limits[0], nil
	}
	return "no enrolled host can run it (" + strings.Join(reasons, "; ") + ")", nil
}

// listRuns lists the runs p sees, newest first.
func (s *Server) listRuns(ctx context.Context, p *principal, job string, group int64, limit int) ([]api.Run, error) {
	return s.queryRuns(ctx, runQuery{job: job, group: group, limit: limit, owner: p.ownerFilter()})
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

func (s *Server) queryRuns(ctx context.Context, rq runQuery) ([]api.Run, error) {
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
		js, _ := jsonString(rq.states)
		add(`state IN (SELECT value FROM json_each(?))`, js)
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
	rows, err := s.st.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *r)
	}
	return out, rows.Err()
}

func (s *Server) listArtifacts(ctx context.Context, id int64) ([]api.Artifact, error) {
	rows, err := s.st.query(ctx, `SELECT path, size, mode, sha256 FROM artifacts WHERE run = ? ORDER BY path`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Artifact{}
	for rows.Next() {
		var a api.Artifact
		if err := rows.Scan(&a.Path, &a.Size, &a.Mode, &a.SHA256); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// cancelRun ends a queued run at once; a leased or running one gets
// cancel_asked, which its worker learns from the heartbeat answer.
func (s *Server) cancelRun(ctx context.Context, id int64) (*api.Run, error) {
	now := s.now()
	var wasQueued bool
	err := s.st.write(ctx, func(tx *wtx) error {
		var state string
		err := tx.QueryRow(`SELECT state FROM runs WHERE id = ?`, id).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("no run %d", id)
		}
		if err != nil {
			return err
		}
		switch {
		case state == api.StateQueued:
			wasQueued = true
			_, err = tx.Exec(`UPDATE runs SET state = ?, cancel_asked = 1, finished = ? WHERE id = ?`, api.StateCancelled, ns(now), id)
		case api.Terminal(state):
			return errorf(http.StatusConflict, api.CodeFinished, "run %d already ended (%s)", id, state)
		default:
			_, err = tx.Exec(`UPDATE runs SET cancel_asked = 1 WHERE id = ?`, id)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if wasQueued {
		s.disp.Remove(id)
		if err := s.settle(ctx, id); err != nil {
			return nil, err
		}
	}
	s.changed(id)
	return s.getRun(ctx, id)
}

// incarnation is the condition that a row of runs (unaliased) belongs to
// the current incarnation of its job (see addJob), or to any while the
// name has no job: a job removed and added again, maybe by another owner,
// lists none of the runs of the removed one by its name.
const incarnation = `runs.revision >= coalesce((SELECT inc.first_revision FROM jobs inc WHERE inc.name = runs.job), 0)`

// jobSpec returns a stored revision of a job; revisions never change, so
// they are cached.
func (s *Server) jobSpec(ctx context.Context, name string, rev int) (*api.Job, error) {
	if j, ok := s.cachedSpec(name, rev); ok {
		return j, nil
	}
	var spec string
	if err := s.st.queryRow(ctx, `SELECT spec FROM job_revisions WHERE name = ? AND revision = ?`, name, rev).Scan(&spec); err != nil {
		return nil, fmt.Errorf("job %s revision %d: %w", name, rev, err)
	}
	return s.jobSpecFrom(name, rev, spec)
}

// jobSpecFrom is jobSpec with the stored spec already read.
func (s *Server) jobSpecFrom(name string, rev int, spec string) (*api.Job, error) {
	if j, ok := s.cachedSpec(name, rev); ok {
		return j, nil
	}
	j := &api.Job{}
	if err := json.Unmarshal([]byte(spec), j); err != nil {
		return nil, fmt.Errorf("job %s revision %d: %w", name, rev, err)
	}
	s.specMu.Lock()
	s.specs[specKey(name, rev)] = j
	s.specMu.Unlock()
	return j, nil
}

// cachedSpec returns revision rev of job name if jobSpecFrom has decoded it.
func (s *Server) cachedSpec(name string, rev int) (*api.Job, bool) {
	s.specMu.Lock()
	defer s.specMu.Unlock()
	j, ok := s.specs[specKey(name, rev)]
	return j, ok
}

func specKey(name string, rev int) string { return fmt.Sprintf("%s\x00%d", name, rev) }

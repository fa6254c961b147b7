package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on reproduce groups and on finding artifacts.

// hostsWithPostHook counts the undrained hosts whose facts name hook as a
// post hook.
func (s *store) hostsWithPostHook(ctx context.Context, hook string) (int, error) {
	var n int
	q := `SELECT count(*) FROM hosts WHERE drained = 0 AND json_extract(facts, '$.hooks.'||?) = 'post'`
	if s.pg != nil {
		q = `SELECT count(*) FROM hosts WHERE drained = 0 AND facts::jsonb -> 'hooks' ->> ? = 'post'`
	}
	err := s.queryRow(ctx, q, hook).Scan(&n)
	return n, err
}

// groupMembers returns the members of grp, member 0 first, with their
// artifacts.
func (s *store) groupMembers(ctx context.Context, grp int64) ([]api.Run, error) {
	rows, err := s.query(ctx, `SELECT `+runCols+` FROM runs WHERE grp = ? ORDER BY member`, grp)
	out, err := collect(rows, err, func(row rowScanner) (api.Run, error) {
		r, err := scanRun(row)
		if err != nil {
			return api.Run{}, err
		}
		return *r, nil
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		id, _ := strconv.ParseInt(out[i].ID, 10, 64)
		if out[i].Artifacts, err = s.artifacts(ctx, id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// runGroup reads run id's group (0: none).
func (s *store) runGroup(ctx context.Context, id int64) (int64, error) {
	var grp int64
	err := s.queryRow(ctx, `SELECT coalesce(grp, 0) FROM runs WHERE id = ?`, id).Scan(&grp)
	return grp, err
}

// decideGroup stores verdict (JSON) as grp's unless it has one, and then
// queues task, if any, as the group's diffoscope run, in the verdict's own
// write so that a crash cannot leave an unreproducible group without its
// report task. taskRun is that run (id 0: none queued now).
func (s *store) decideGroup(ctx context.Context, grp int64, verdict string, task *api.DiffoscopeTask, now time.Time) (taskRun queuedRun, decided bool, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		taskRun, decided = queuedRun{queuedAt: now, kind: api.KindDiffoscope}, false
		res, err := tx.Exec(`UPDATE groups SET verdict = ? WHERE id = ? AND verdict IS NULL`, verdict, grp)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil || n == 0 {
			return err // decided before: its task, if any, was queued then
		}
		decided = true
		if task == nil {
			return nil
		}
		tj, _ := json.Marshal(task)
		err = tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, kind, task, owner)
			SELECT job, revision, ?, 1, 'verdict', ?, ?, ?, ?, owner FROM groups WHERE id = ? RETURNING id, job, revision, owner`,
			api.StateQueued, ns(now), ns(now), api.KindDiffoscope, string(tj), grp).Scan(&taskRun.id, &taskRun.job, &taskRun.rev, &taskRun.owner)
		if err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE groups SET report_run = ? WHERE id = ?`, taskRun.id, grp)
		return err
	})
	return taskRun, decided, err
}

// group reads group grp without its members (a not-found error for
// none), and its diffoscope run (0: none).
func (s *store) group(ctx context.Context, grp int64) (*api.Group, int64, error) {
	g := &api.Group{ID: itoa(grp)}
	var created int64
	var verdict sql.NullString
	var report sql.NullInt64
	err := s.queryRow(ctx, `SELECT job, revision, size, created, source_date_epoch, verdict, report_run FROM groups WHERE id = ?`, grp).
		Scan(&g.Job, &g.Revision, &g.Size, &created, &g.SourceDateEpoch, &verdict, &report)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, notFound("no group %d", grp)
	}
	if err != nil {
		return nil, 0, err
	}
	g.Created = time.Unix(0, created).UTC()
	if verdict.Valid {
		g.Verdict = &api.Verdict{}
		if err := json.Unmarshal([]byte(verdict.String), g.Verdict); err != nil {
			return nil, 0, fmt.Errorf("group %d verdict: %w", grp, err)
		}
	}
	return g, report.Int64, nil
}

// findArtifacts lists the run files with content sha (artifacts_sha256
// index) of owner's runs ("": all), newest run first.
func (s *store) findArtifacts(ctx context.Context, owner, sha string) ([]api.ArtifactRef, error) {
	rows, err := s.query(ctx, `SELECT a.run, r.job, r.revision, a.path, a.size, a.sha256, r.created
		FROM artifacts a JOIN runs r ON r.id = a.run WHERE a.sha256 = ? AND (? = '' OR r.owner = ?) ORDER BY a.run DESC, a.path LIMIT 10000`, sha, owner, owner)
	return collect(rows, err, func(row rowScanner) (api.ArtifactRef, error) {
		var a api.ArtifactRef
		var run, created int64
		if err := row.Scan(&run, &a.Job, &a.Revision, &a.Path, &a.Size, &a.SHA256, &created); err != nil {
			return a, err
		}
		a.Run, a.Created = itoa(run), time.Unix(0, created).UTC()
		return a, nil
	})
}

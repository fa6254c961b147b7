package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations for retention (docs/retention.md): the finished
// runs and their rules, removing runs with their consoles, the blobs the
// rows reference, storage use per owner, and kiln run keep.

// terminalStates is the SQL list of the states a run never leaves.
const terminalStates = `('` + api.StateSucceeded + `','` + api.StateFailed + `','` + api.StateTimedOut + `','` +
	api.StateCancelled + `','` + api.StateLost + `')`

// keptOrPublished is true of a run that `kiln run keep` keeps or whose
// packages a repository holds (the repository names the run that
// published each package, and its provenance is that run's): such a run
// outlives every retention rule. Re-checked in the deleting statement, as
// a publication may come between the plan and the delete.
const keptOrPublished = `(kept <> 0 OR EXISTS (SELECT 1 FROM repo_packages p WHERE p.run = runs.id))`

// finishedRun is what the retention plan needs of one run.
type finishedRun struct {
	id       int64
	job      string
	kind     string
	grp      int64 // its reproduce group (a diffoscope task: the group it reports on)
	finished int64 // ns; the creation time for a run that never started
	kept     bool  // kiln run keep
	// logLen and logStored are its console's bytes received and kept.
	logLen, logStored int64
}

// finishedRuns reads every finished run.
func (s *store) finishedRuns(ctx context.Context) ([]finishedRun, error) {
	rows, err := s.query(ctx, `SELECT id, job, kind,
		coalesce(grp, (SELECT g.id FROM groups g WHERE g.report_run = runs.id), 0),
		coalesce(finished, created), `+keptOrPublished+`, log_len, log_stored FROM runs WHERE state IN `+terminalStates)
	return collect(rows, err, func(sc rowScanner) (finishedRun, error) {
		var r finishedRun
		err := sc.Scan(&r.id, &r.job, &r.kind, &r.grp, &r.finished, &r.kept, &r.logLen, &r.logStored)
		return r, err
	})
}

// liveGroups reads the groups with a member that has not finished: a
// group is kept whole while one of its members may still run.
func (s *store) liveGroups(ctx context.Context) (map[int64]bool, error) {
	rows, err := s.query(ctx, `SELECT DISTINCT grp FROM runs WHERE grp IS NOT NULL AND state NOT IN `+terminalStates)
	ids, err := collect(rows, err,
		func(sc rowScanner) (int64, error) {
			var g int64
			err := sc.Scan(&g)
			return g, err
		})
	out := map[int64]bool{}
	for _, g := range ids {
		out[g] = true
	}
	return out, err
}

// jobRetentions reads the [retention] table of each job's current
// revision (jobs without one are left out).
func (s *store) jobRetentions(ctx context.Context) (map[string]*api.Retention, error) {
	type jr struct {
		name string
		r    *api.Retention
	}
	rows, err := s.query(ctx, `SELECT j.name, r.spec FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision`)
	list, err := collect(rows, err,
		func(sc rowScanner) (jr, error) {
			var name, spec string
			if err := sc.Scan(&name, &spec); err != nil {
				return jr{}, err
			}
			var j struct {
				Retention *api.Retention `json:"retention"`
			}
			if err := json.Unmarshal([]byte(spec), &j); err != nil {
				return jr{}, fmt.Errorf("job %s spec: %w", name, err)
			}
			return jr{name, j.Retention}, nil
		})
	out := map[string]*api.Retention{}
	for _, x := range list {
		if x.r != nil {
			out[x.name] = x.r
		}
	}
	return out, err
}

// removedRuns is what removeRuns removed.
type removedRuns struct {
	runs, consoles int
	consoleBytes   int64
}

// removeRuns removes the runs of ids that are still finished and not
// kept (kiln run keep may have come meanwhile), in one transaction with
// everything that hangs off them: consoles, artifact rows, attestations,
// and groups left without a member. The blob files the artifacts name are
// the blob sweep's (rows first, files after: a crash leaves at worst an
// unreferenced file, which a later sweep collects).
func (s *store) removeRuns(ctx context.Context, ids []int64) (removedRuns, error) {
	var out removedRuns
	if len(ids) == 0 {
		return out, nil
	}
	err := s.writeRC(ctx, func(tx *wtx) error {
		out = removedRuns{}
		in, args := inList(ids)
		rows, err := tx.Query(`DELETE FROM runs WHERE id IN `+in+` AND NOT `+keptOrPublished+` AND state IN `+terminalStates+
			` RETURNING id, log_len, log_stored, coalesce(grp, 0)`, args...)
		if err != nil {
			return err
		}
		var gone, grps []int64
		for rows.Next() {
			var id, logLen, stored, grp int64
			if err := rows.Scan(&id, &logLen, &stored, &grp); err != nil {
				rows.Close()
				return err
			}
			gone = append(gone, id)
			if logLen > 0 {
				out.consoles++
				out.consoleBytes += stored
			}
			if grp != 0 {
				grps = append(grps, grp)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		out.runs = len(gone)
		if len(gone) == 0 {
			return nil
		}
		in, args = inList(gone)
		for _, q := range []string{
			`DELETE FROM run_logs WHERE run IN ` + in,
			`DELETE FROM artifacts WHERE run IN ` + in,
			`DELETE FROM run_attestations WHERE run IN ` + in,
		} {
			if _, err := tx.Exec(q, args...); err != nil {
				return err
			}
		}
		if len(grps) > 0 {
			in, args := inList(grps)
			if _, err := tx.Exec(`DELETE FROM groups WHERE id IN `+in+` AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.grp = groups.id)`, args...); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// inList is "(?,?,...)" for ids, and ids as arguments. The list is
// padded (repeating the last id) to a power of two, so that a few
// statement texts serve every batch: SQLite keeps each text prepared.
func inList[T any](ids []T) (string, []any) {
	n := 1
	for n < len(ids) {
		n *= 2
	}
	args := make([]any, n)
	for i := range args {
		args[i] = ids[min(i, len(ids)-1)]
	}
	return "(" + strings.TrimSuffix(strings.Repeat("?,", n), ",") + ")", args
}

// blobRef is one reference to a blob: held by run (0 when no run holds
// it: a job's input, a recent upload, ...).
type blobRef struct {
	sha string
	run int64
}

// liveQuery lists one kind of reference to blobs. A blob is live while
// any query yields it; the sweep removes the others (older than the
// grace period). A new kind of reference (image versions, published
// repositories) is one more entry in liveBlobQueries. Partial uploads
// are not blobs yet: they live in the blob store's partial/ directory,
// which the sweep never walks (partial_ttl expires them).
type liveQuery struct {
	kind string
	refs func(s *store, ctx context.Context, cutoff time.Time, yield func(blobRef)) error
}

var liveBlobQueries = []liveQuery{
	{"run artifacts", (*store).artifactRefs},
	{"job inputs", (*store).inputRefs},
	{"recent uploads", (*store).uploadRefs},
	{"image versions", (*store).imageRefs},
	{"repositories", (*store).repoRefs},
}

// imageRefs: every server-held image version's compressed tree. A
// version goes with `kiln image rm --server`, never by age: hosts fetch
// it for every run pinned to it.
func (s *store) imageRefs(ctx context.Context, _ time.Time, yield func(blobRef)) error {
	rows, err := s.query(ctx, `SELECT blob FROM image_versions`)
	return yieldShas(rows, err, yield)
}

// yieldShas yields each blob that rows (of one column: a sha256) name,
// and closes them.
func yieldShas(rows *sql.Rows, err error, yield func(blobRef)) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r blobRef
		if err := rows.Scan(&r.sha); err != nil {
			return err
		}
		yield(r)
	}
	return rows.Err()
}

// artifactRefs: every run's artifacts.
func (s *store) artifactRefs(ctx context.Context, _ time.Time, yield func(blobRef)) error {
	rows, err := s.query(ctx, `SELECT sha256, run FROM artifacts`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r blobRef
		if err := rows.Scan(&r.sha, &r.run); err != nil {
			return err
		}
		yield(r)
	}
	return rows.Err()
}

// inputRefs: the inputs of each job's current revision and of every
// revision a run (finished or not) was made from.
func (s *store) inputRefs(ctx context.Context, _ time.Time, yield func(blobRef)) error {
	rows, err := s.query(ctx, `SELECT r.name, r.spec FROM job_revisions r
		WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.name = r.name AND j.revision = r.revision)
		OR EXISTS (SELECT 1 FROM runs x WHERE x.job = r.name AND x.revision = r.revision)`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name, spec string
		if err := rows.Scan(&name, &spec); err != nil {
			return err
		}
		var j struct {
			Inputs []api.Input `json:"inputs"`
		}
		if err := json.Unmarshal([]byte(spec), &j); err != nil {
			return fmt.Errorf("job %s spec: %w", name, err)
		}
		for _, in := range j.Inputs {
			yield(blobRef{sha: in.SHA256})
		}
	}
	return rows.Err()
}

// uploadRefs: blobs a client uploaded after cutoff (the grace period: it
// may name them in a job next).
func (s *store) uploadRefs(ctx context.Context, cutoff time.Time, yield func(blobRef)) error {
	rows, err := s.query(ctx, `SELECT sha256 FROM blob_grants WHERE created > ?`, ns(cutoff))
	return yieldShas(rows, err, yield)
}

// dropGrants removes the upload grants of blobs the sweep removed.
func (s *store) dropGrants(ctx context.Context, shas []string) error {
	if len(shas) == 0 {
		return nil
	}
	return s.write(ctx, func(tx *wtx) error {
		in, args := inList(shas)
		_, err := tx.Exec(`DELETE FROM blob_grants WHERE sha256 IN `+in, args...)
		return err
	})
}

// consoleTotals counts the stored consoles (runs with console bytes) and
// their bytes, for the metrics.
func (s *store) consoleTotals(ctx context.Context) (n, bytes int64, err error) {
	err = s.queryRow(ctx, `SELECT count(*), coalesce(sum(log_stored), 0) FROM runs WHERE log_len > 0`).Scan(&n, &bytes)
	return n, bytes, err
}

// ownerUsage is the bytes owner stores: its runs' artifacts (each run's
// counted, even when runs share a blob) and consoles.
func (s *store) ownerUsage(ctx context.Context, owner string) (int64, error) {
	var arts, logs int64
	err := s.queryRow(ctx, `SELECT
		coalesce((SELECT sum(a.size) FROM artifacts a JOIN runs r ON r.id = a.run WHERE r.owner = ?), 0),
		coalesce((SELECT sum(log_stored) FROM runs WHERE owner = ?), 0)`, owner, owner).Scan(&arts, &logs)
	return arts + logs, err
}

// jobOwner reads job name's owner (a not-found error for no such job).
func (s *store) jobOwner(ctx context.Context, name string) (string, error) {
	var owner string
	err := s.queryRow(ctx, `SELECT owner FROM jobs WHERE name = ?`, name).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) {
		return "", notFound("no job %s", name)
	}
	return owner, err
}

// setKept sets run id's kept flag (kiln run keep / unkeep).
func (s *store) setKept(ctx context.Context, id int64, kept bool) error {
	return s.writeOne(ctx, func(tx *wtx) error {
		var got int64
		err := tx.QueryRow(`UPDATE runs SET kept = ? WHERE id = ? RETURNING id`, kept, id).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("no run %d", id)
		}
		return err
	})
}

// runKept reads run id's kept flag.
func (s *store) runKept(ctx context.Context, id int64) (bool, error) {
	var kept bool
	err := s.queryRow(ctx, `SELECT kept FROM runs WHERE id = ?`, id).Scan(&kept)
	if errors.Is(err, sql.ErrNoRows) {
		return false, notFound("no run %d", id)
	}
	return kept, err
}

// gcLock is the advisory lock key of the one sweeper among replicas.
const gcLock = migrationLock + 29

// tryExclusive runs fn holding advisory lock key if no other session
// holds it (PostgreSQL); ran false: another replica does. With SQLite,
// where one server opens the database, it just runs fn (the Server
// excludes its own sweeps).
func (s *store) tryExclusive(ctx context.Context, key int64, fn func(context.Context) error) (ran bool, err error) {
	if s.pg == nil {
		return true, fn(ctx)
	}
	conn, err := s.pg.db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("database: %w", err)
	}
	defer conn.Close()
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
		return false, fmt.Errorf("database: %w", err)
	}
	if !ok {
		return false, nil
	}
	defer unlock(ctx, conn, key)
	return true, fn(ctx)
}

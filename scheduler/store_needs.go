package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on jobs that build on jobs (graph.go): queueing
// a graph's runs, releasing or skipping the runs that wait for their
// needs, the needed runs' artifacts, and the events that execute a job.

// graphRun is a job of a graph to satisfy, in an order where every job
// comes after the jobs it needs.
type graphRun struct {
	job      string
	rev      int
	owner    string
	priority int
	key      string   // set by queueGraph, with the image version pinned
	needs    []string // the jobs it needs, each earlier in the plan
	root     bool     // the job executed; the others are its needs
	spec     *api.Job
	// image and imageDigest: the server-held image version the run is
	// pinned to (pinRun), set by queueGraph.
	image, imageDigest string
}

// graphPlan is one execute of a job with needs.
type graphPlan struct {
	runs    []graphRun
	trigger string
	// cause is what a trigger's root run was executed for ("run:812"),
	// recorded once per job (store_triggers.go); "" for other executes.
	cause string
	reuse bool // the root may be answered with a succeeded run of its key
	now   time.Time
	// maxQueued is an owner's max_queued (0: no bound).
	maxQueued func(owner string) int
}

// graphQueued is what queueGraph did: the root's run, whether it was an
// existing run (reused), and the runs it queued ready for dispatch.
type graphQueued struct {
	root   int64
	reused bool
	ready  []queuedRun
	// fresh counts the runs inserted (ready or dep-wait).
	fresh int
	// state and needs are the root run's state and the runs it needs,
	// when it is new.
	state string
	needs []api.RunNeed
	key   string // the root's
}

// errGraphChanged: a job of the graph changed between reading the graph
// and queueing its runs.
func errGraphChanged(job string) *apiError {
	return errorf(http.StatusConflict, codeGraphChanged, "job %q changed while its graph was being queued; execute again", job)
}

// codeGraphChanged is errGraphChanged's code: executeGraph tries once
// more on the graph read again from the database.
const codeGraphChanged = "graph_changed"

// queueGraph satisfies each job of plan in order, in one transaction: a
// needed job by its latest succeeded run of the same key, else by one of
// that key still on its way (queued, waiting or leased), else by a new
// run; the root by a new run (or, with reuse, its latest succeeded run of
// the same key). A new run whose needs have all succeeded is queued;
// otherwise it waits (dep-wait) and its needs are recorded in run_needs.
func (s *store) queueGraph(ctx context.Context, plan graphPlan) (g graphQueued, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		g = graphQueued{}
		ids := make(map[string]int64, len(plan.runs))
		states := make(map[string]string, len(plan.runs))
		owners := map[string]bool{}
		// Every job still at the revision the plan read (a cached one may
		// be stale), before anything is answered or queued: one query.
		if err := checkHeads(tx, plan.runs); err != nil {
			return err
		}
		// Each run is pinned to its image's server-held version, if any,
		// and its key has that version's digest (and so its dependents').
		keys := make(map[string]string, len(plan.runs))
		for i := range plan.runs {
			r := &plan.runs[i]
			var err error
			if r.image, r.imageDigest, err = pinRun(tx, r.spec.Image, r.spec.Arch); err != nil {
				return err
			}
			nk := make(map[string]string, len(r.spec.Needs))
			for _, n := range r.spec.Needs {
				nk[n.Job] = keys[n.Job]
			}
			r.key = runKey(r.job, r.rev, r.spec, r.imageDigest, nk)
			keys[r.job] = r.key
		}
		g.key = keys[plan.runs[len(plan.runs)-1].job]
		if plan.cause != "" {
			fired, err := triggerFired(tx, plan.runs[len(plan.runs)-1].job, plan.cause)
			if err != nil {
				return err
			}
			if fired {
				return errTriggerFired
			}
		}
		if root := plan.runs[len(plan.runs)-1]; plan.reuse {
			// Answered before anything is queued: a succeeded run of the
			// root's key had needs of the keys the plan has.
			id, _, err := runOfKey(tx, root.job, root.key, false)
			if err != nil || id != 0 {
				g.root, g.reused = id, id != 0
				return err
			}
		}
		if err := succeededOfKeys(tx, plan.runs[:len(plan.runs)-1], ids, states); err != nil {
			return err
		}
		for _, r := range plan.runs {
			if _, ok := ids[r.job]; ok {
				continue
			}
			if !r.root {
				id, state, err := runOfKey(tx, r.job, r.key, true)
				if err != nil {
					return err
				}
				if id != 0 {
					ids[r.job], states[r.job] = id, state
					continue
				}
			}
			state := api.StateQueued
			for _, n := range r.needs {
				if states[n] != api.StateSucceeded {
					state = api.StateDepWait
				}
			}
			trigger, cause := plan.trigger, plan.cause
			if !r.root {
				trigger, cause = "needed", ""
			}
			var id int64
			if err := tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, owner, priority, run_key, image, image_digest, trigger_cause) VALUES (?,?,?,1,?,?,?,?,?,?,?,?,?) RETURNING id`,
				r.job, r.rev, state, trigger, ns(plan.now), ns(plan.now), r.owner, r.priority, r.key, r.image, r.imageDigest, cause).Scan(&id); err != nil {
				return err
			}
			if len(r.needs) > 0 {
				// One statement for all of the run's needs.
				q := `INSERT INTO run_needs(run_id, job, need_run) VALUES ` + strings.Repeat(`(?,?,?),`, len(r.needs)-1) + `(?,?,?)`
				args := make([]any, 0, 3*len(r.needs))
				for _, n := range r.needs {
					args = append(args, id, n, ids[n])
				}
				if _, err := tx.Exec(q, args...); err != nil {
					return err
				}
			}
			ids[r.job], states[r.job] = id, state
			owners[r.owner] = true
			g.fresh++
			if state == api.StateQueued {
				g.ready = append(g.ready, queuedRun{id: id, job: r.job, rev: r.rev, queuedAt: plan.now, kind: api.KindJob, owner: r.owner, priority: r.priority,
					image: r.image, imageDigest: r.imageDigest})
			}
			if r.root {
				g.root, g.state = id, state
				for _, n := range r.needs {
					g.needs = append(g.needs, api.RunNeed{Job: n, Run: itoa(ids[n]), State: states[n]})
				}
				slices.SortFunc(g.needs, func(a, b api.RunNeed) int { return strings.Compare(a.Job, b.Job) })
			}
		}
		// An owner's waiting runs count with its queued ones: a graph
		// must not be a way around max_queued.
		for owner := range owners {
			limit := plan.maxQueued(owner)
			if limit <= 0 {
				continue
			}
			var have int
			if err := tx.QueryRow(`SELECT count(*) FROM runs WHERE owner = ? AND state IN (?, ?)`, owner, api.StateQueued, api.StateDepWait).Scan(&have); err != nil {
				return err
			}
			if have > limit {
				return queueFull(owner, have-g.fresh, limit)
			}
		}
		return nil
	})
	return g, err
}

// checkHeads answers errGraphChanged unless every job of runs is still
// at the revision and owner runs has, and keeps their rows from being
// removed until tx ends (PostgreSQL).
func checkHeads(tx *wtx, runs []graphRun) error {
	args := make([]any, len(runs))
	for i, r := range runs {
		args[i] = r.job
	}
	rows, err := tx.Query(`SELECT name, revision, owner FROM jobs WHERE name IN (`+strings.Repeat(`?,`, len(runs)-1)+`?)`+tx.keyShare(), args...)
	type head struct {
		name, owner string
		rev         int
	}
	heads, err := collect(rows, err, func(row rowScanner) (head, error) {
		var h head
		err := row.Scan(&h.name, &h.rev, &h.owner)
		return h, err
	})
	if err != nil {
		return err
	}
	for _, r := range runs {
		i := slices.IndexFunc(heads, func(h head) bool { return h.name == r.job })
		switch {
		case i < 0:
			return notFound("no job %q", r.job)
		case heads[i].rev != r.rev || heads[i].owner != r.owner:
			return errGraphChanged(r.job)
		}
	}
	return nil
}

// succeededOfKeys finds, in one statement, the latest succeeded run of
// each of runs' keys, into ids and states.
func succeededOfKeys(tx *wtx, runs []graphRun, ids map[string]int64, states map[string]string) error {
	if len(runs) == 0 {
		return nil
	}
	one := `SELECT * FROM (SELECT job, id FROM runs WHERE job = ? AND run_key = ? AND run_key <> '' AND state = ? ORDER BY id DESC LIMIT 1) AS k`
	q := one
	args := make([]any, 0, 3*len(runs))
	for i, r := range runs {
		if i > 0 {
			q += ` UNION ALL ` + one + strconv.Itoa(i)
		}
		args = append(args, r.job, r.key, api.StateSucceeded)
	}
	rows, err := tx.Query(q, args...)
	type found struct {
		job string
		id  int64
	}
	l, err := collect(rows, err, func(row rowScanner) (found, error) {
		var f found
		err := row.Scan(&f.job, &f.id)
		return f, err
	})
	for _, f := range l {
		ids[f.job], states[f.job] = f.id, api.StateSucceeded
	}
	return err
}

// runOfKey finds job's latest succeeded run of key or, with pending, its
// latest one of key still on its way; id 0 for none.
func runOfKey(tx *wtx, job, key string, pending bool) (id int64, state string, err error) {
	// run_key <> '' lets SQLite use the partial index runs_key.
	err = tx.QueryRow(`SELECT id, state FROM runs WHERE job = ? AND run_key = ? AND run_key <> '' AND state = ? ORDER BY id DESC LIMIT 1`,
		job, key, api.StateSucceeded).Scan(&id, &state)
	if errors.Is(err, sql.ErrNoRows) && pending {
		err = tx.QueryRow(`SELECT id, state FROM runs WHERE job = ? AND run_key = ? AND run_key <> '' AND state IN (?,?,?,?) ORDER BY id DESC LIMIT 1`,
			job, key, api.StateQueued, api.StateDepWait, api.StateLeased, api.StateRunning).Scan(&id, &state)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return id, state, err
}

// hasDependents reports whether any run needs one of ids.
func (s *store) hasDependents(ctx context.Context, ids []int64) (bool, error) {
	for _, id := range ids {
		var n int
		err := s.queryRow(ctx, `SELECT count(*) FROM run_needs WHERE need_run = ?`, id).Scan(&n)
		if err != nil {
			return false, err
		}
		if n > 0 {
			return true, nil
		}
	}
	return false, nil
}

// settleNeeds moves the waiting runs that need one of ended on: each
// whose needs have all succeeded joins the queue (ready); each one of
// whose needs ended otherwise ends skipped, naming that run, and so do
// the runs waiting for it, transitively.
func (s *store) settleNeeds(ctx context.Context, ended []int64, now time.Time) (ready []queuedRun, skipped []int64, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		ready, skipped = ready[:0], skipped[:0]
		work := append([]int64(nil), ended...)
		for len(work) > 0 {
			id := work[0]
			work = work[1:]
			var job, state string
			err := tx.QueryRow(`SELECT job, state FROM runs WHERE id = ?`, id).Scan(&job, &state)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if !api.Terminal(state) {
				continue
			}
			deps, err := dependents(tx, id)
			if err != nil {
				return err
			}
			for _, d := range deps {
				if state != api.StateSucceeded {
					res, err := tx.Exec(`UPDATE runs SET state = ?, finished = ?, error = ? WHERE id = ? AND state = ?`,
						api.StateSkipped, ns(now), fmt.Sprintf("skipped: needed %s run %d %s", job, id, state), d, api.StateDepWait)
					if err != nil {
						return err
					}
					if n, _ := res.RowsAffected(); n > 0 {
						skipped = append(skipped, d)
						work = append(work, d)
					}
					continue
				}
				var waiting int
				if err := tx.QueryRow(`SELECT count(*) FROM run_needs n JOIN runs r ON r.id = n.need_run WHERE n.run_id = ? AND r.state <> ?`,
					d, api.StateSucceeded).Scan(&waiting); err != nil {
					return err
				}
				if waiting > 0 {
					continue
				}
				var x queuedRun
				err := tx.QueryRow(`UPDATE runs SET state = ?, queued_at = ? WHERE id = ? AND state = ? RETURNING id, job, revision, owner, priority, image, image_digest`,
					api.StateQueued, ns(now), d, api.StateDepWait).Scan(&x.id, &x.job, &x.rev, &x.owner, &x.priority, &x.image, &x.imageDigest)
				if errors.Is(err, sql.ErrNoRows) {
					continue
				}
				if err != nil {
					return err
				}
				x.queuedAt, x.kind = now, api.KindJob
				ready = append(ready, x)
			}
		}
		return nil
	})
	return ready, skipped, err
}

func dependents(tx *wtx, id int64) ([]int64, error) {
	rows, err := tx.Query(`SELECT run_id FROM run_needs WHERE need_run = ? ORDER BY run_id`, id)
	return collect(rows, err, func(row rowScanner) (int64, error) {
		var d int64
		err := row.Scan(&d)
		return d, err
	})
}

// endedNeeds lists the ended runs that waiting runs need: what a server
// that stopped between a run's end and its dependents' release settles
// at start-up.
func (s *store) endedNeeds(ctx context.Context) ([]int64, error) {
	rows, err := s.query(ctx, `SELECT DISTINCT n.need_run FROM run_needs n JOIN runs d ON d.id = n.run_id JOIN runs r ON r.id = n.need_run
		WHERE d.state = ? AND r.state IN (?,?,?,?,?,?) ORDER BY n.need_run`,
		api.StateDepWait, api.StateSucceeded, api.StateFailed, api.StateTimedOut, api.StateCancelled, api.StateLost, api.StateSkipped)
	return collect(rows, err, func(row rowScanner) (int64, error) {
		var id int64
		err := row.Scan(&id)
		return id, err
	})
}

// runGraph reads run id's key and the runs it needs.
func (s *store) runGraph(ctx context.Context, id int64) (key string, needs []api.RunNeed, err error) {
	if err := s.queryRow(ctx, `SELECT run_key FROM runs WHERE id = ?`, id).Scan(&key); err != nil {
		return "", nil, err
	}
	rows, err := s.query(ctx, `SELECT n.job, n.need_run, r.state FROM run_needs n JOIN runs r ON r.id = n.need_run WHERE n.run_id = ? ORDER BY n.job`, id)
	needs, err = collect(rows, err, func(row rowScanner) (api.RunNeed, error) {
		var n api.RunNeed
		var rid int64
		err := row.Scan(&n.Job, &rid, &n.State)
		n.Run = itoa(rid)
		return n, err
	})
	return key, needs, err
}

// neededArtifact is an artifact of a run that run id needs, with that
// run's state; a needed run without artifacts is one with path "".
type neededArtifact struct {
	job, state string
	run        int64
	path       string
	size       int64
	sha        string
}

// neededArtifacts lists the artifacts of the runs run id needs, by job
// and path, in one query: dispatch reads them, and the needed runs'
// states, for every run with needs.
func (s *store) neededArtifacts(ctx context.Context, id int64) ([]neededArtifact, error) {
	rows, err := s.query(ctx, `SELECT n.job, r.state, n.need_run, coalesce(a.path, ''), coalesce(a.size, 0), coalesce(a.sha256, '')
		FROM run_needs n JOIN runs r ON r.id = n.need_run LEFT JOIN artifacts a ON a.run = n.need_run
		WHERE n.run_id = ? ORDER BY n.job, a.path`, id)
	return collect(rows, err, func(row rowScanner) (neededArtifact, error) {
		var a neededArtifact
		err := row.Scan(&a.job, &a.state, &a.run, &a.path, &a.size, &a.sha)
		return a, err
	})
}

// setTriggers replaces job's events (its on list) inside tx: called with
// every new revision of the job.
func setTriggers(tx *wtx, job string, events []string) error {
	if _, err := tx.Exec(`DELETE FROM job_triggers WHERE job = ?`, job); err != nil {
		return err
	}
	for _, e := range events {
		if _, err := tx.Exec(`INSERT INTO job_triggers(event, job) VALUES (?,?)`, e, job); err != nil {
			return err
		}
	}
	return nil
}

// triggered lists the jobs event executes, by name.
func (s *store) triggered(ctx context.Context, event string) ([]string, error) {
	rows, err := s.query(ctx, `SELECT t.job FROM job_triggers t JOIN jobs j ON j.name = t.job WHERE t.event = ? ORDER BY t.job`, event)
	return collect(rows, err, func(row rowScanner) (string, error) {
		var j string
		err := row.Scan(&j)
		return j, err
	})
}

// consumed reports whether a run of job still on its way builds on run
// need: a success trigger then has nothing new to run.
func (s *store) consumed(ctx context.Context, job string, need int64) (bool, error) {
	var n int
	err := s.queryRow(ctx, `SELECT count(*) FROM run_needs n JOIN runs r ON r.id = n.run_id WHERE n.need_run = ? AND r.job = ? AND r.state IN (?,?,?,?)`,
		need, job, api.StateQueued, api.StateDepWait, api.StateLeased, api.StateRunning).Scan(&n)
	return n > 0, err
}

// setRunKey sets run id's key (a run pinned to a server-held image by the
// statement that queued it).
func (s *store) setRunKey(ctx context.Context, id int64, key string) error {
	return s.writeOne(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE runs SET run_key = ? WHERE id = ?`, key, id)
		return err
	})
}

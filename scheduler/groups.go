package scheduler

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// maxGroupSize bounds reproduce = N: each member wants its own host.
const maxGroupSize = api.MaxReproduce

// memberVariations is what member i of a group of job runs under. Member
// 0 is the baseline; the others differ from it in every named variation
// (api.VariationNames) the job varies and its tier can give, so that a
// build depending on any of them shows up as unreproducible; the rest
// are listed under api.VariationKept. The hostname is the run ID (set by
// the caller, which differs between members anyway) unless it is kept.
func memberVariations(i int, epoch int64, job groupJob) map[string]string {
	v := map[string]string{
		"SOURCE_DATE_EPOCH": strconv.FormatInt(epoch, 10),
		"TZ":                "UTC",
		"LANG":              "C.UTF-8",
		"LC_ALL":            "C.UTF-8",
		api.VariationUmask:  "022",
		api.VariationUser:   "0:0",
		api.VariationCwd:    "/work",
	}
	varied := map[string]bool{}
	var kept []string
	tier := cmp.Or(job.Isolation, api.IsolationContainer)
	for _, n := range api.VariationNames {
		tiers, limited := api.VariationTiers[n]
		if slices.Contains(job.varied(), n) && (!limited || slices.Contains(tiers, tier)) {
			varied[n] = true
		} else {
			kept = append(kept, n)
		}
	}
	if len(kept) > 0 {
		v[api.VariationKept] = strings.Join(kept, ",")
	}
	if varied["shell"] {
		v[api.VariationShell] = "dash" // a kept shell is the image's
	}
	if i == 0 {
		return v
	}
	// Alternate between two sets so that members 1 and 2 also differ.
	alt := (i - 1) % 2
	letter := string(rune('a' + i)) //nolint:gosec // G115: i < 16 (reproduce is at most 16)
	set := func(name, key, val string) {
		if varied[name] {
			v[key] = val
		}
	}
	set("timezone", "TZ", []string{"Etc/GMT-14", "Etc/GMT+12"}[alt])
	set("locale", "LANG", []string{"fr_CH.UTF-8", "de_DE.UTF-8"}[alt])
	set("locale", "LC_ALL", v["LANG"])
	set("umask", api.VariationUmask, "002")
	uid := 1000 + alt
	set("user", api.VariationUser, fmt.Sprintf("%d:%d", uid, uid))
	set("build_path", api.VariationCwd, "/work/build-"+letter)
	set("cpus", api.VariationCPUs, strconv.Itoa(1+alt))
	set("domain", api.VariationDomain, "build-"+letter+".kiln.invalid")
	set("home", api.VariationHome, "/home/kiln-"+letter)
	set("shell", api.VariationShell, "bash")
	return v
}

// groupJob is what memberVariations reads of a job's stored spec.
type groupJob struct {
	Reproduce  int
	Vary, Keep []string
	Isolation  string
}

func (j groupJob) varied() []string {
	return (&api.Job{Vary: j.Vary, Keep: j.Keep}).Varied()
}

// queueRuns inserts, inside tx, one queued run of job's current revision,
// or a group of n runs when n >= 2 (n == 0: the job's own reproduce).
// It returns the run IDs, the revision and the group (0: none).
func queueRuns(tx *wtx, job, trigger string, now time.Time, n int) (ids []int64, rev int, grp int64, err error) {
	var spec, owner string
	err = tx.QueryRow(`SELECT j.revision, r.spec, j.owner FROM jobs j JOIN job_revisions r ON r.name = j.name AND r.revision = j.revision WHERE j.name = ?`+tx.keyShare(), job).Scan(&rev, &spec, &owner)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, 0, notFound("no job %q", job)
	}
	if err != nil {
		return nil, 0, 0, err
	}
	var gj groupJob
	if err := json.Unmarshal([]byte(spec), &gj); err != nil {
		return nil, 0, 0, fmt.Errorf("job %s revision %d: %w", job, rev, err)
	}
	if n == 0 {
		n = gj.Reproduce
	}
	if n > maxGroupSize {
		// Only a job stored before reproduce was bounded can get here.
		return nil, 0, 0, badRequest("job %s: reproduce %d exceeds %d (modify the job)", job, n, maxGroupSize)
	}
	if n < 2 {
		var id int64
		err = tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, owner) VALUES (?,?,?,1,?,?,?,?) RETURNING id`,
			job, rev, api.StateQueued, trigger, ns(now), ns(now), owner).Scan(&id)
		return []int64{id}, rev, 0, err
	}
	epoch := now.Unix()
	if err := tx.QueryRow(`INSERT INTO groups(job, revision, size, created, source_date_epoch, owner) VALUES (?,?,?,?,?,?) RETURNING id`,
		job, rev, n, ns(now), epoch, owner).Scan(&grp); err != nil {
		return nil, 0, 0, err
	}
	for i := 0; i < n; i++ {
		var id int64
		if err := tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, grp, member, owner) VALUES (?,?,?,1,?,?,?,?,?,?) RETURNING id`,
			job, rev, api.StateQueued, trigger, ns(now), ns(now), grp, i, owner).Scan(&id); err != nil {
			return nil, 0, 0, err
		}
		v := memberVariations(i, epoch, gj)
		v[api.VariationHostname] = itoa(id)
		if !slices.Contains(gj.varied(), "hostname") {
			v[api.VariationHostname] = "kiln-group-" + itoa(grp)
		}
		b, _ := json.Marshal(v)
		if _, err := tx.Exec(`UPDATE runs SET variations = ? WHERE id = ?`, string(b), id); err != nil {
			return nil, 0, 0, err
		}
		ids = append(ids, id)
	}
	return ids, rev, grp, nil
}

// groupVerdict compares the artifacts of a finished group's members.
func groupVerdict(members []api.Run, now time.Time) *api.Verdict {
	v := &api.Verdict{Decided: now.UTC()}
	hosts := map[string]bool{}
	byPath := map[string]map[string]string{} // path -> run -> sha256
	for _, m := range members {
		if m.State != api.StateSucceeded {
			v.Failed = append(v.Failed, m.ID)
		}
		if m.Host != "" {
			v.SameHost = v.SameHost || hosts[m.Host]
			hosts[m.Host] = true
		}
		for _, a := range m.Artifacts {
			if byPath[a.Path] == nil {
				byPath[a.Path] = map[string]string{}
			}
			byPath[a.Path][m.ID] = a.SHA256
		}
	}
	for _, p := range slices.Sorted(maps.Keys(byPath)) {
		runs := byPath[p]
		if len(runs) < len(members) {
			ma := api.MissingArtifact{Path: p}
			for _, m := range members {
				if _, ok := runs[m.ID]; !ok {
					ma.MissingIn = append(ma.MissingIn, m.ID)
				}
			}
			v.Missing = append(v.Missing, ma)
			continue
		}
		shas := map[string]bool{}
		for _, s := range runs {
			shas[s] = true
		}
		if len(shas) > 1 {
			v.Differs = append(v.Differs, p)
		}
	}
	v.Reproducible = len(v.Failed) == 0 && len(v.Differs) == 0 && len(v.Missing) == 0
	return v
}

// diffoscopeTask picks what a diffoscope report of an unreproducible
// group compares: the first succeeded member (the baseline, unless it
// failed) and the first other succeeded member whose artifacts are not the
// same; nil when no two succeeded members differ (the verdict is about
// failures only, and there is nothing to compare).
func diffoscopeTask(grp int64, members []api.Run) *api.DiffoscopeTask {
	var ok []*api.Run
	for i := range members {
		if members[i].State == api.StateSucceeded {
			ok = append(ok, &members[i])
		}
	}
	for _, b := range ok[min(1, len(ok)):] {
		diffs, identical := api.CompareArtifacts(ok[0].Artifacts, b.Artifacts)
		if identical {
			continue
		}
		t := &api.DiffoscopeTask{Group: itoa(grp), RunA: ok[0].ID, RunB: b.ID}
		for _, d := range diffs {
			if d.Status != api.ArtifactSame {
				t.Files = append(t.Files, d)
			}
		}
		return t
	}
	return nil
}

// groupReport reads the state of a group's diffoscope task.
func (s *Server) groupReport(ctx context.Context, taskRun int64) (*api.GroupReport, error) {
	r, err := s.getRun(ctx, taskRun)
	if err != nil {
		return nil, err
	}
	rep := &api.GroupReport{Run: r.ID, State: r.State, Host: r.Host, Error: r.Error}
	if r.Diffoscope != nil {
		rep.RunA, rep.RunB = r.Diffoscope.RunA, r.Diffoscope.RunB
	}
	for i, a := range r.Artifacts {
		if a.Path == api.DiffoscopeReport && r.State == api.StateSucceeded {
			rep.Report = &r.Artifacts[i]
		}
	}
	if r.State == api.StateQueued {
		var n int
		q := `SELECT count(*) FROM hosts WHERE drained = 0 AND json_extract(facts, '$.hooks.'||?) = 'post'`
		if s.st.pg != nil {
			q = `SELECT count(*) FROM hosts WHERE drained = 0 AND facts::jsonb -> 'hooks' ->> ? = 'post'`
		}
		err := s.st.queryRow(ctx, q, api.DiffoscopeHook).Scan(&n)
		if err != nil {
			return nil, err
		}
		rep.NoHost = n == 0
	}
	return rep, nil
}

// groupMembers returns the members of grp, member 0 first, with their
// artifacts.
func (s *Server) groupMembers(ctx context.Context, grp int64) ([]api.Run, error) {
	rows, err := s.st.query(ctx, `SELECT `+runCols+` FROM runs WHERE grp = ? ORDER BY member`, grp)
	if err != nil {
		return nil, err
	}
	var out []api.Run
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, *r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		id, _ := strconv.ParseInt(out[i].ID, 10, 64)
		if out[i].Artifacts, err = s.listArtifacts(ctx, id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// settle decides the verdict of the groups of the given runs whose members
// have all ended. Deciding twice is harmless: the first stored verdict
// stands, and members never change once terminal.
func (s *Server) settle(ctx context.Context, runIDs ...int64) error {
	seen := map[int64]bool{}
	var errs []error
	for _, id := range runIDs {
		var grp int64
		if err := s.st.queryRow(ctx, `SELECT coalesce(grp, 0) FROM runs WHERE id = ?`, id).Scan(&grp); err != nil || grp == 0 || seen[grp] {
			continue
		}
		seen[grp] = true
		errs = append(errs, s.settleGroup(ctx, grp))
	}
	return errors.Join(errs...)
}

func (s *Server) settleGroup(ctx context.Context, grp int64) error {
	members, err := s.groupMembers(ctx, grp)
	if err != nil {
		return err
	}
	for _, m := range members {
		if !api.Terminal(m.State) {
			return nil
		}
	}
	now := s.now()
	v := groupVerdict(members, now)
	b, _ := json.Marshal(v)
	var task *api.DiffoscopeTask
	if !v.Reproducible {
		task = diffoscopeTask(grp, members)
	}
	var taskRun int64
	var job string
	var rev int
	err = s.st.write(ctx, func(tx *wtx) error {
		taskRun = 0
		res, err := tx.Exec(`UPDATE groups SET verdict = ? WHERE id = ? AND verdict IS NULL`, string(b), grp)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 || task == nil {
			return err // decided before: its task, if any, was queued then
		}
		// Queued in the verdict's own write, so that a crash cannot
		// leave an unreproducible group without its report task.
		tj, _ := json.Marshal(task)
		err = tx.QueryRow(`INSERT INTO runs(job, revision, state, attempt, trigger_kind, created, queued_at, kind, task, owner)
			SELECT job, revision, ?, 1, 'verdict', ?, ?, ?, ?, owner FROM groups WHERE id = ? RETURNING id, job, revision`,
			api.StateQueued, ns(now), ns(now), api.KindDiffoscope, string(tj), grp).Scan(&taskRun, &job, &rev)
		if err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE groups SET report_run = ? WHERE id = ?`, taskRun, grp)
		return err
	})
	if err != nil {
		return err
	}
	s.disp.Forget(grp)
	if taskRun != 0 {
		if err := s.enqueue(ctx, taskRun, job, rev, 0, api.KindDiffoscope, now); err != nil {
			return err
		}
		s.log.Info("diffoscope task queued", "group", grp, "run", taskRun, "a", task.RunA, "b", task.RunB, "files", len(task.Files))
	}
	s.log.Info("group decided", "group", grp, "reproducible", v.Reproducible, "same_host", v.SameHost,
		"differs", len(v.Differs), "missing", len(v.Missing), "failed", len(v.Failed))
	return nil
}

func (s *Server) getGroup(ctx context.Context, grp int64) (*api.Group, error) {
	g := &api.Group{ID: itoa(grp)}
	var created int64
	var verdict sql.NullString
	var report sql.NullInt64
	err := s.st.queryRow(ctx, `SELECT job, revision, size, created, source_date_epoch, verdict, report_run FROM groups WHERE id = ?`, grp).
		Scan(&g.Job, &g.Revision, &g.Size, &created, &g.SourceDateEpoch, &verdict, &report)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("no group %d", grp)
	}
	if err != nil {
		return nil, err
	}
	g.Created = time.Unix(0, created).UTC()
	if verdict.Valid {
		g.Verdict = &api.Verdict{}
		if err := json.Unmarshal([]byte(verdict.String), g.Verdict); err != nil {
			return nil, fmt.Errorf("group %d verdict: %w", grp, err)
		}
	}
	if g.Members, err = s.groupMembers(ctx, grp); err != nil {
		return nil, err
	}
	if report.Valid {
		if g.Report, err = s.groupReport(ctx, report.Int64); err != nil {
			return nil, fmt.Errorf("group %d report: %w", grp, err)
		}
	}
	return g, nil
}

// findArtifacts lists the run files with content sha (artifacts_sha256
// index), newest run first.
func (s *Server) findArtifacts(ctx context.Context, p *principal, sha string) ([]api.ArtifactRef, error) {
	owner := p.ownerFilter()
	rows, err := s.st.query(ctx, `SELECT a.run, r.job, r.revision, a.path, a.size, a.sha256, r.created
		FROM artifacts a JOIN runs r ON r.id = a.run WHERE a.sha256 = ? AND (? = '' OR r.owner = ?) ORDER BY a.run DESC, a.path LIMIT 10000`, sha, owner, owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.ArtifactRef{}
	for rows.Next() {
		var a api.ArtifactRef
		var run, created int64
		if err := rows.Scan(&run, &a.Job, &a.Revision, &a.Path, &a.Size, &a.SHA256, &created); err != nil {
			return nil, err
		}
		a.Run, a.Created = itoa(run), time.Unix(0, created).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

func (s *Server) hGetGroup(w http.ResponseWriter, r *http.Request, p *principal) error {
	grp, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || grp <= 0 {
		return notFound("no group %q", r.PathValue("id"))
	}
	var owner string
	err = s.st.queryRow(r.Context(), `SELECT owner FROM groups WHERE id = ?`, grp).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
		return notFound("no group %d", grp)
	}
	if err != nil {
		return err
	}
	g, err := s.getGroup(r.Context(), grp)
	if err != nil {
		return err
	}
	if g.Verdict == nil {
		// A verdict whose deciding write failed is decided on read.
		if err := s.settleGroup(r.Context(), grp); err != nil {
			return err
		}
		if g, err = s.getGroup(r.Context(), grp); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, g)
}

func (s *Server) hFindArtifacts(w http.ResponseWriter, r *http.Request, p *principal) error {
	sha := r.URL.Query().Get("sha256")
	if !api.ValidSHA256(sha) {
		return badRequest("sha256 %q: want 64 lowercase hex digits", sha)
	}
	refs, err := s.findArtifacts(r.Context(), p, sha)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, refs)
}

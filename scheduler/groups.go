package scheduler

import (
	"cmp"
	"context"
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
	set("aslr", api.VariationASLR, "off")
	set("kernel", api.VariationKernel, "uname26")
	set("user_group", api.VariationUserGroup, "kiln-"+letter+":kiln-"+letter+"-grp")
	// reprotest's offset: more than a year, so the year, month and day of
	// the week all differ from the baseline's.
	set("time", api.VariationTime, clockOffset)
	return v
}

// clockOffset is how far the time variation moves a member's clock.
const clockOffset = "+398d"

// groupJob is what memberVariations reads of a job's stored spec.
type groupJob struct {
	Reproduce  int
	Priority   int
	Vary, Keep []string
	Isolation  string
	// Image and Arch pick the server-held image version the runs are
	// pinned to, if any (pinRun).
	Image, Arch string
	Needs       []api.Need // a job with needs is queued through its graph
	// Inputs make the run's key (runKey) with the revision and image.
	Inputs []api.Input
}

// key is the run key of revision rev of job (which needs nothing) pinned
// to the image version of digest ("" for a host's own image).
func (j groupJob) key(job string, rev int, digest string) string {
	return runKey(job, rev, &api.Job{Image: j.Image, Inputs: j.Inputs}, digest, nil)
}

func (j groupJob) varied() []string {
	return (&api.Job{Vary: j.Vary, Keep: j.Keep}).Varied()
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
		n, err := s.st.hostsWithPostHook(ctx, api.DiffoscopeHook)
		if err != nil {
			return nil, err
		}
		rep.NoHost = n == 0
	}
	return rep, nil
}

// settle decides the verdict of the groups of the given runs whose members
// have all ended. Deciding twice is harmless: the first stored verdict
// stands, and members never change once terminal.
func (s *Server) settle(ctx context.Context, runIDs ...int64) error {
	seen := map[int64]bool{}
	var errs []error
	for _, id := range runIDs {
		grp, err := s.st.runGroup(ctx, id)
		if err != nil || grp == 0 || seen[grp] {
			continue
		}
		seen[grp] = true
		errs = append(errs, s.settleGroup(ctx, grp))
	}
	return errors.Join(errs...)
}

func (s *Server) settleGroup(ctx context.Context, grp int64) error {
	members, err := s.st.groupMembers(ctx, grp)
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
	taskRun, decided, err := s.st.decideGroup(ctx, grp, string(b), task, now)
	if err != nil {
		return err
	}
	s.disp.Forget(grp)
	if !decided {
		// Another member's end (or replica) decided the group and
		// publishes its packages: publishing again would record them as
		// unchanged over the first publication.
		return nil
	}
	if taskRun.id != 0 {
		if err := s.enqueue(ctx, taskRun); err != nil {
			return err
		}
		s.log.Info("diffoscope task queued", "group", grp, "run", taskRun.id, "a", task.RunA, "b", task.RunB, "files", len(task.Files))
	}
	s.log.Info("group decided", "group", grp, "reproducible", v.Reproducible, "same_host", v.SameHost,
		"differs", len(v.Differs), "missing", len(v.Missing), "failed", len(v.Failed))
	if v.Reproducible {
		s.publishAfterVerdict(ctx, members)
	}
	return nil
}

func (s *Server) getGroup(ctx context.Context, grp int64) (*api.Group, error) {
	g, report, err := s.st.group(ctx, grp)
	if err != nil {
		return nil, err
	}
	if g.Members, err = s.st.groupMembers(ctx, grp); err != nil {
		return nil, err
	}
	for _, m := range g.Members {
		id, _ := parseID(m.ID)
		ps, err := s.st.publications(ctx, id)
		if err != nil {
			return nil, err
		}
		g.Publications = append(g.Publications, ps...)
	}
	if report != 0 {
		if g.Report, err = s.groupReport(ctx, report); err != nil {
			return nil, fmt.Errorf("group %d report: %w", grp, err)
		}
	}
	return g, nil
}

// groupOfPath is the group a request's {id} names, if p may see it.
func (s *Server) groupOfPath(r *http.Request, p *principal) (*api.Group, int64, error) {
	grp, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || grp <= 0 {
		return nil, 0, notFound("no group %q", r.PathValue("id"))
	}
	if err := s.visibleGroup(r.Context(), p, grp); err != nil {
		return nil, 0, err
	}
	g, err := s.getGroup(r.Context(), grp)
	return g, grp, err
}

func (s *Server) hGetGroup(w http.ResponseWriter, r *http.Request, p *principal) error {
	g, grp, err := s.groupOfPath(r, p)
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
	refs, err := s.st.findArtifacts(r.Context(), p.ownerFilter(), sha)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, refs)
}

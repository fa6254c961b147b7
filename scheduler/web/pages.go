package web

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"

	"github.com/kiln-build/kiln/api"
)

var funcs = template.FuncMap{
	"ago":    ago,
	"stamp":  stamp,
	"queued": queuedFor,
	"ran":    ranFor,
	"size":   humanSize,
	"exit":   func(r api.Run) string { return r.ExitText() },
	"live":   func(state string) bool { return !api.Terminal(state) },
	"pct": func(a, b int) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f%%", 100*float64(a)/float64(b))
	},
	"join": strings.Join,
	"pathEscape": func(p string) string {
		parts := strings.Split(p, "/")
		for i := range parts {
			parts[i] = url.PathEscape(parts[i])
		}
		return strings.Join(parts, "/")
	},
	"failedCheck": func(c api.Check) bool { return c.Failed() },
	"runs":        runRows,
	// imagePath is the page path of image version NAME@VERSION.
	"imagePath": func(ref string) string { return strings.Replace(ref, "@", "/", 1) },
}

// runRow is one line of a run table, formatted once in Go: a table of
// 50 runs through template function calls costs more than the query.
type runRow struct {
	ID, Job, State, Exit, Host, Trigger, Group string
	Revision, Attempt                          int
	Created, Ago, Queued, Ran                  string
}

func runRows(now time.Time, runs []api.Run) []runRow {
	rows := make([]runRow, len(runs))
	for i, r := range runs {
		rows[i] = runRow{ID: r.ID, Job: r.Job, State: r.State, Exit: r.ExitText(), Host: r.Host, Trigger: r.Trigger, Group: r.Group,
			Revision: r.Revision, Attempt: r.Attempt, Created: stamp(r.Created), Ago: ago(now, r.Created),
			Queued: queuedFor(now, r), Ran: ranFor(now, r)}
	}
	return rows
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return shortDur(now.Sub(t)) + " ago"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// queuedFor is how long a run waited for a host (so far).
func queuedFor(now time.Time, r api.Run) string {
	switch {
	case !r.Started.IsZero():
		return shortDur(r.Started.Sub(r.Created))
	case !r.Finished.IsZero():
		return shortDur(r.Finished.Sub(r.Created))
	}
	return shortDur(now.Sub(r.Created))
}

// ranFor is how long a run ran (so far).
func ranFor(now time.Time, r api.Run) string {
	switch {
	case r.Started.IsZero():
		return "-"
	case !r.Finished.IsZero():
		return shortDur(r.Finished.Sub(r.Started))
	}
	return shortDur(now.Sub(r.Started))
}

func shortDur(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// humanSize is n bytes in binary units, as "16 B" or "1.5 KiB".
func humanSize(n int64) string {
	return humanize.IBytes(uint64(max(n, 0)))
}

// allStates are the run states the front page filters by.
var allStates = []string{api.StateQueued, api.StateLeased, api.StateRunning, api.StateSucceeded, api.StateFailed,
	api.StateTimedOut, api.StateCancelled, api.StateLost}

// failedStates are the ends the failure feed reports.
var failedStates = []string{api.StateFailed, api.StateTimedOut, api.StateLost}

const frontPageRuns = 50

func (h *Handler) front(w http.ResponseWriter, r *http.Request, q *request) error {
	f := r.URL.Query()
	rq := RunQuery{Job: f.Get("job"), Host: f.Get("host"), Before: f.Get("before"), Limit: frontPageRuns + 1}
	if st := f.Get("state"); st != "" {
		if !slices.Contains(allStates, st) {
			return statusError{http.StatusBadRequest, fmt.Sprintf("state %q: want one of %s", st, strings.Join(allStates, ", "))}
		}
		rq.States = []string{st}
	}
	runs, err := h.b.Runs(r.Context(), q.v, rq)
	if err != nil {
		return err
	}
	var older string
	if len(runs) > frontPageRuns {
		runs = runs[:frontPageRuns]
		nq := url.Values{}
		for _, k := range []string{"job", "state", "host"} {
			if v := f.Get(k); v != "" {
				nq.Set(k, v)
			}
		}
		nq.Set("before", runs[len(runs)-1].ID)
		older = "/?" + nq.Encode()
	}
	return h.render(w, r, q, http.StatusOK, "front", "Runs", map[string]any{
		"Runs": runs, "Job": rq.Job, "Host": rq.Host, "State": f.Get("state"), "States": allStates, "Older": older,
		"Filtered": rq.Job != "" || rq.Host != "" || len(rq.States) > 0 || rq.Before != "",
	})
}

func (h *Handler) jobs(w http.ResponseWriter, r *http.Request, q *request) error {
	js, err := h.b.Jobs(r.Context(), q.v)
	if err != nil {
		return err
	}
	return h.render(w, r, q, http.StatusOK, "jobs", "Jobs", map[string]any{"Jobs": js})
}

// revisionView is a job revision with the diff from the one before it.
type revisionView struct {
	Revision int
	Created  time.Time
	Diff     []diffLine
	TOML     string
}

// jobTOML shows a job file as TOML, its script as a multi-line string so
// that a revision's diff shows the script lines that changed. It is for
// reading, not for feeding back to kiln.
func jobTOML(j api.Job) string {
	script := j.Script
	j.Script = ""
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(j); err != nil {
		return fmt.Sprintf("(cannot show: %v)", err)
	}
	return strings.Replace(b.String(), `script = ""`, "script = \"\"\"\n"+strings.TrimSuffix(script, "\n")+"\n\"\"\"", 1)
}

func (h *Handler) job(w http.ResponseWriter, r *http.Request, q *request) error {
	ctx, name := r.Context(), r.PathValue("name")
	ji, err := h.b.Job(ctx, q.v, name)
	if err != nil {
		return err
	}
	revs, err := h.b.Revisions(ctx, q.v, name)
	if err != nil {
		return err
	}
	stats, err := h.b.JobStats(ctx, q.v, name)
	if err != nil {
		return err
	}
	runs, err := h.b.Runs(ctx, q.v, RunQuery{Job: name, Limit: 20})
	if err != nil {
		return err
	}
	views := make([]revisionView, len(revs))
	for i, rv := range revs {
		views[i] = revisionView{Revision: rv.Revision, Created: rv.Created, TOML: jobTOML(rv.Job)}
	}
	for i := range views {
		if i+1 < len(views) {
			views[i].Diff = lineDiff(views[i+1].TOML, views[i].TOML)
		}
	}
	return h.render(w, r, q, http.StatusOK, "job", "Job "+name, map[string]any{
		"Job": ji, "Revisions": views, "Stats": stats, "Runs": runs, "CanWrite": q.v.MayChange(ji.Owner),
	})
}

func (h *Handler) execute(w http.ResponseWriter, r *http.Request, q *request) error {
	run, err := h.b.ExecuteJob(r.Context(), q.v, r.PathValue("name"))
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/runs/"+run.ID, http.StatusSeeOther) //nolint:gosec // G710: a path on this site
	return nil
}

func (h *Handler) cancel(w http.ResponseWriter, r *http.Request, q *request) error {
	id := r.PathValue("id")
	if err := h.b.CancelRun(r.Context(), q.v, id); err != nil {
		return err
	}
	http.Redirect(w, r, "/runs/"+id, http.StatusSeeOther) //nolint:gosec // G710: a path on this site
	return nil
}

func (h *Handler) drain(w http.ResponseWriter, r *http.Request, q *request) error {
	if err := h.b.DrainHost(r.Context(), q.v, r.PathValue("name")); err != nil {
		return err
	}
	http.Redirect(w, r, "/hosts", http.StatusSeeOther)
	return nil
}

func (h *Handler) hosts(w http.ResponseWriter, r *http.Request, q *request) error {
	hs, err := h.b.Hosts(r.Context(), q.v)
	if err != nil {
		return err
	}
	return h.render(w, r, q, http.StatusOK, "hosts", "Hosts", map[string]any{"Hosts": hs})
}

func (h *Handler) group(w http.ResponseWriter, r *http.Request, q *request) error {
	g, err := h.b.Group(r.Context(), q.v, r.PathValue("id"))
	if err != nil {
		return err
	}
	return h.render(w, r, q, http.StatusOK, "group", "Group "+g.ID, map[string]any{"G": g})
}

func (h *Handler) compare(w http.ResponseWriter, r *http.Request, q *request) error {
	a, err := h.b.Run(r.Context(), q.v, r.PathValue("a"))
	if err != nil {
		return err
	}
	b, err := h.b.Run(r.Context(), q.v, r.PathValue("b"))
	if err != nil {
		return err
	}
	c := api.CompareRuns(a, b)
	ja, err := h.revision(r, q, a)
	if err != nil {
		return err
	}
	jb, err := h.revision(r, q, b)
	if err != nil {
		return err
	}
	var env []api.ValueDiff
	keys := map[string]bool{}
	for k := range ja.Env {
		keys[k] = true
	}
	for k := range jb.Env {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		env = append(env, api.ValueDiff{Key: k, A: ja.Env[k], B: jb.Env[k]})
	}
	return h.render(w, r, q, http.StatusOK, "compare", "Compare "+a.ID+" and "+b.ID, map[string]any{
		"C": c, "A": a, "B": b, "InA": ja.Inputs, "InB": jb.Inputs, "Env": env})
}

// revision is the job file a run ran.
func (h *Handler) revision(r *http.Request, q *request, run *api.Run) (*api.Job, error) {
	revs, err := h.b.Revisions(r.Context(), q.v, run.Job)
	if err != nil {
		return nil, err
	}
	for _, rv := range revs {
		if rv.Revision == run.Revision {
			return &rv.Job, nil
		}
	}
	return &api.Job{}, nil // older than the revisions listed
}

func (h *Handler) search(w http.ResponseWriter, r *http.Request, q *request) error {
	sha := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("sha256")))
	data := map[string]any{"SHA": sha}
	if sha != "" {
		refs, err := h.b.FindArtifacts(r.Context(), q.v, sha)
		if err != nil {
			return err
		}
		data["Refs"] = refs
	}
	return h.render(w, r, q, http.StatusOK, "search", "Find by sha256", data)
}

func (h *Handler) artifact(w http.ResponseWriter, r *http.Request, q *request) error {
	f, a, err := h.b.OpenArtifact(r.Context(), q.v, r.PathValue("id"), r.PathValue("path"))
	if err != nil {
		return err
	}
	defer f.Close()
	hd := w.Header()
	// Always a download: an artifact is job output and never rendered as
	// a page of this site.
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(a.Path)}))
	hd.Set("X-Kiln-SHA256", a.SHA256)
	hd.Set("Cache-Control", "private, max-age=31536000, immutable")
	http.ServeContent(w, r, "", time.Time{}, f)
	return nil
}

// attestation downloads a run's signed provenance, the DSSE envelope the
// API's /v1/runs/{id}/attestation answers (docs/publishing.md).
func (h *Handler) attestation(w http.ResponseWriter, r *http.Request, q *request) error {
	id := r.PathValue("id")
	_, env, err := h.b.Attestation(r.Context(), q.v, id)
	if err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": "run-" + id + ".dsse.json"}))
	hd.Set("X-Content-Type-Options", "nosniff")
	_, err = w.Write(env) //nolint:gosec // G705: JSON the server verified, sent as a nosniff attachment, never rendered as a page
	return err
}

// feed is an Atom feed of a job's failed runs, newest first.
func (h *Handler) feed(w http.ResponseWriter, r *http.Request, q *request) error {
	name := r.PathValue("name")
	if _, err := h.b.Revisions(r.Context(), q.v, name); err != nil {
		return err
	}
	runs, err := h.b.Runs(r.Context(), q.v, RunQuery{Job: name, States: failedStates, Limit: 50})
	if err != nil {
		return err
	}
	base := "http://" + r.Host
	if h.opt.TLS || r.TLS != nil {
		base = "https://" + r.Host
	}
	body, err := atomFeed(base, name, runs, h.opt.Now())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/atom+xml; charset=utf-8")
	_, err = io.Copy(w, bytes.NewReader(body))
	return err
}

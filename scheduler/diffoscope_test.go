package scheduler_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// hookFacts are the facts of a host with no images and the given hooks
// (name -> stage): it can take a diffoscope task but no job run.
func hookFacts(hooks map[string]string) api.Facts {
	f := hostFacts()
	f.Hooks = hooks
	return f
}

// twinGroup executes job as a group of two, leases member 0 to w1 and
// member 1 to w2, and reports them with the given files; it returns the
// group and the two assignments, member 0 first.
func twinGroup(t *testing.T, srv *testsupport.TestServer, w1, w2 *api.Client, facts api.Facts, job string,
	files0, files1 map[string]string, exit1 int) (string, *api.Assignment, *api.Assignment) {
	t.Helper()
	ctx := context.Background()
	r, err := srv.Client().ExecuteJobWith(ctx, job, api.ExecuteRequest{Reproduce: 2})
	if err != nil {
		t.Fatal(err)
	}
	a1 := mustLease(t, w1, facts, time.Second)
	a2 := mustLease(t, w2, facts, time.Second)
	w := map[*api.Assignment]*api.Client{a1: w1, a2: w2}
	if a1.Member != 0 {
		a1, a2 = a2, a1
	}
	finish(t, w[a1], a1, files0)
	if exit1 != 0 {
		if _, err := w[a2].ReportResult(ctx, a2.RunID, api.ResultRequest{Fence: a2.Fence, ExitCode: exit1}); err != nil {
			t.Fatal(err)
		}
	} else {
		finish(t, w[a2], a2, files1)
	}
	return r.Group, a1, a2
}

func mustGroup(t *testing.T, c *api.Client, id string) *api.Group {
	t.Helper()
	g, err := c.GetGroup(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if g.Verdict == nil {
		t.Fatalf("group %s has no verdict: %+v", id, g)
	}
	return g
}

func noTask(t *testing.T, w *api.Client, facts api.Facts) {
	t.Helper()
	a, err := w.Lease(context.Background(), api.LeaseRequest{Facts: facts, Wait: api.Duration(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if a != nil {
		t.Fatalf("leased run %s (diffoscope task: %v) to a host with facts %+v", a.RunID, a.Diffoscope != nil, facts)
	}
}

// TestDiffoscopeTask: an unreproducible group queues one diffoscope task
// that waits (and says so) while no host defines a diffoscope post hook,
// survives a server restart, is leased only to a host that does, carries
// the two runs and their differing files, and whose uploaded report
// becomes the group's report, fetchable with `kiln artifact get`.
func TestDiffoscopeTask(t *testing.T) {
	srv := testsupport.StartServer(t, `reproduce_wait = "1h"`)
	ctx := context.Background()
	admin := srv.Client()
	facts := hostFacts("busybox")
	w1 := enroll(t, srv, "h1", nil, facts)
	w2 := enroll(t, srv, "h2", nil, facts)
	addJob(t, admin, "name = \"clock\"\nimage = \"busybox\"\nscript = \"date > /out/date.txt\"\n")

	group, a1, a2 := twinGroup(t, srv, w1, w2, facts, "clock",
		map[string]string{"date.txt": "Mon\n", "same.txt": "x", "only-a.txt": "y"},
		map[string]string{"date.txt": "Tue\n", "same.txt": "x"}, 0)
	g := mustGroup(t, admin, group)
	rep := g.Report
	if g.Verdict.Reproducible || rep == nil || rep.State != api.StateQueued || !rep.NoHost ||
		rep.RunA != a1.RunID || rep.RunB != a2.RunID || rep.Report != nil {
		t.Fatalf("group %+v, report %+v: want a queued task comparing %s and %s, no host for it", g, rep, a1.RunID, a2.RunID)
	}
	out, _, code := srv.Run("run", "group", group)
	if code != 4 || !strings.Contains(out, "pending (no host defines a diffoscope hook") {
		t.Fatalf("run group: exit %d\n%s", code, out)
	}

	// The server's lease uses the facts sent with the lease request.
	for _, tt := range []struct {
		name  string
		facts api.Facts
	}{
		{"no hooks", facts},
		{"diffoscope as a pre hook", hookFacts(map[string]string{"diffoscope": "pre"})},
		{"another post hook", hookFacts(map[string]string{"lint": "post"})},
		{"no free slot", func() api.Facts {
			f := hookFacts(map[string]string{"diffoscope": "post"})
			f.FreeSlots = 0
			return f
		}()},
	} {
		t.Run("not leased: "+tt.name, func(t *testing.T) { noTask(t, w1, tt.facts) })
	}

	srv.Restart() // the task is rebuilt into the queue from the database
	hf := hookFacts(map[string]string{"diffoscope": "post", "lint": "post"})
	w3 := enroll(t, srv, "differ", nil, hf)
	if g := mustGroup(t, admin, group); g.Report == nil || g.Report.NoHost || g.Report.State != api.StateQueued {
		t.Fatalf("report with a hook host enrolled: %+v", g.Report)
	}
	a := mustLease(t, w3, hf, 2*time.Second)
	d := a.Diffoscope
	if d == nil || d.Group != group || d.RunA != a1.RunID || d.RunB != a2.RunID || a.Job.Name != "clock" || a.Group != "" {
		t.Fatalf("assignment %+v, task %+v", a, d)
	}
	want := map[string]api.ArtifactDiff{
		"date.txt":   {Path: "date.txt", Status: api.ArtifactDiffers, SHA256A: sha([]byte("Mon\n")), SHA256B: sha([]byte("Tue\n"))},
		"only-a.txt": {Path: "only-a.txt", Status: api.ArtifactOnlyA, SHA256A: sha([]byte("y"))},
	}
	if len(d.Files) != len(want) {
		t.Fatalf("task files %+v, want %+v", d.Files, want)
	}
	for _, f := range d.Files {
		if f != want[f.Path] {
			t.Errorf("task file %+v, want %+v", f, want[f.Path])
		}
	}
	var b strings.Builder
	if err := w3.DownloadBlob(ctx, d.Files[0].SHA256A, &b); err != nil || b.Len() == 0 {
		t.Fatalf("the hook host downloads a member's artifact: %q %v", b.String(), err)
	}
	if g := mustGroup(t, admin, group); g.Report.State != api.StateLeased || g.Report.Host != "differ" {
		t.Fatalf("report while leased: %+v", g.Report)
	}

	const report = "--- a/date.txt\n+++ b/date.txt\n-Mon\n+Tue\n"
	finish(t, w3, a, map[string]string{api.DiffoscopeReport: report},
		api.Check{Name: "diffoscope", Stage: "post", ExitCode: 1})
	g = mustGroup(t, admin, group)
	if r := g.Report; r == nil || r.State != api.StateSucceeded || r.Run != a.RunID || r.Report == nil ||
		r.Report.Path != api.DiffoscopeReport || r.Report.SHA256 != sha([]byte(report)) {
		t.Fatalf("report after the upload: %+v", g.Report)
	}
	out, _, code = srv.Run("run", "group", group)
	if code != 4 || !strings.Contains(out, "diffoscope.txt of run "+a.RunID) || !strings.Contains(out, "kiln artifact get "+a.RunID) {
		t.Fatalf("run group: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	if _, errOut, code := srv.Run("artifact", "get", a.RunID, api.DiffoscopeReport, "-o", dir); code != 0 {
		t.Fatalf("artifact get: %d %s", code, errOut)
	}
	if got, err := os.ReadFile(filepath.Join(dir, api.DiffoscopeReport)); err != nil || string(got) != report {
		t.Fatalf("fetched report %q, %v", got, err)
	}
	run, err := admin.GetRun(ctx, a.RunID)
	if err != nil || run.Kind != api.KindDiffoscope || run.Trigger != "verdict" || run.Group != "" || run.Diffoscope == nil {
		t.Fatalf("task run: %+v %v", run, err)
	}
	if out, _, code := srv.Run("run", "info", a.RunID); code != 0 || !strings.Contains(out, "diffoscope of group "+group) {
		t.Fatalf("run info of the task: exit %d\n%s", code, out)
	}
	noTask(t, w3, hf) // exactly one task per group
}

// TestNoDiffoscopeTask: a reproducible group, and an unreproducible one
// with a single succeeded member, queue no task.
func TestNoDiffoscopeTask(t *testing.T) {
	srv := testsupport.StartServer(t, `reproduce_wait = "1h"`)
	admin := srv.Client()
	facts := hostFacts("busybox")
	w1 := enroll(t, srv, "h1", nil, facts)
	w2 := enroll(t, srv, "h2", nil, facts)
	hf := hookFacts(map[string]string{"diffoscope": "post"})
	w3 := enroll(t, srv, "differ", nil, hf)
	addJob(t, admin, "name = \"j\"\nimage = \"busybox\"\nscript = \"true\"\n")
	for _, tt := range []struct {
		name         string
		files1       map[string]string
		exit1        int
		reproducible bool
	}{
		{"reproducible", map[string]string{"a.txt": "same"}, 0, true},
		{"one member failed", nil, 2, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			group, _, _ := twinGroup(t, srv, w1, w2, facts, "j", map[string]string{"a.txt": "same"}, tt.files1, tt.exit1)
			g := mustGroup(t, admin, group)
			if g.Verdict.Reproducible != tt.reproducible || g.Report != nil {
				t.Fatalf("verdict %+v, report %+v", g.Verdict, g.Report)
			}
			noTask(t, w3, hf)
		})
	}
}

package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
)

// graphServer is a real server on SQLite in a temporary directory, with
// one enrolled host "h" that takes runs through lease and complete, as a
// worker would.
type graphServer struct {
	*Server
	cfg   *config.Server
	facts api.Facts
}

func newGraphServer(t *testing.T, opts ...Option) *graphServer {
	t.Helper()
	cfg := config.DefaultServer()
	cfg.DataDir = t.TempDir()
	ctx := context.Background()
	s, err := New(ctx, cfg, append([]Option{WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	g := &graphServer{Server: s, cfg: cfg, facts: api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1,
		Images: []api.ImageFact{{Name: "bookworm", Versions: []string{"1"}}}}}
	tok, err := s.createEnrollmentToken(ctx, &api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.enroll(ctx, &principal{kind: kindEnrollment, hash: hashToken(tok.Token)}, &api.EnrollRequest{Name: "h", Facts: g.facts}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// restart stops the server and starts another on its database, as after
// a kill: nothing but the database carries over.
func (g *graphServer) restart(t *testing.T) {
	t.Helper()
	g.Close()
	s, err := New(context.Background(), g.cfg, WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	g.Server = s
}

func (g *graphServer) add(t *testing.T, file string) {
	t.Helper()
	j, err := api.ParseJobFile([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.addJob(context.Background(), adminPrincipal, j); err != nil {
		t.Fatal(err)
	}
}

func (g *graphServer) modify(t *testing.T, file string) error {
	t.Helper()
	j, err := api.ParseJobFile([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.modifyJob(context.Background(), adminPrincipal, j.Name, j)
	return err
}

func (g *graphServer) exec(t *testing.T, job string, reuse bool) *api.Run {
	t.Helper()
	r, err := g.execute(context.Background(), adminPrincipal, job, api.ExecuteRequest{Reuse: reuse})
	if err != nil {
		t.Fatalf("execute %s: %v", job, err)
	}
	return r
}

// take leases the next run, which must be of job, and ends it with exit
// code, leaving files (path: content) as its artifacts.
func (g *graphServer) take(t *testing.T, job string, code int, files map[string]string) *api.Assignment {
	t.Helper()
	ctx := context.Background()
	a, err := g.lease(ctx, "h", &g.facts, false, 0)
	if err != nil || a == nil {
		t.Fatalf("lease for %s: %+v %v", job, a, err)
	}
	if a.Job.Name != job {
		t.Fatalf("leased run %s of %s, want one of %s", a.RunID, a.Job.Name, job)
	}
	if err := a.Validate(); err != nil {
		t.Fatalf("the assignment a worker gets is refused: %v", err)
	}
	var arts []api.Artifact
	for p, content := range files {
		sum := sha256.Sum256([]byte(content))
		sha := hex.EncodeToString(sum[:])
		if _, _, err := g.blobs.Write(ctx, sha, "test", 0, int64(len(content)), bytes.NewReader([]byte(content)), false); err != nil {
			t.Fatal(err)
		}
		arts = append(arts, api.Artifact{Path: p, Size: int64(len(content)), Mode: 0o644, SHA256: sha})
	}
	id, _ := parseRunID(a.RunID)
	if _, err := g.complete(ctx, "h", id, &api.ResultRequest{Fence: a.Fence, ExitCode: code, Artifacts: arts}); err != nil {
		t.Fatal(err)
	}
	return a
}

func (g *graphServer) run(t *testing.T, id string) *api.Run {
	t.Helper()
	n, _ := parseRunID(id)
	r, err := g.getRun(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (g *graphServer) noneQueued(t *testing.T) {
	t.Helper()
	if a, err := g.lease(context.Background(), "h", &g.facts, false, 0); a != nil || err != nil {
		t.Fatalf("leased %s of %s (err %v), want nothing queued", a.RunID, a.Job.Name, err)
	}
}

func needPaths(a *api.Assignment) []string {
	var l []string
	for _, n := range a.Needs {
		l = append(l, n.Job+"/"+n.Path)
	}
	return l
}

func needRun(r *api.Run, job string) string {
	for _, n := range r.Needs {
		if n.Job == job {
			return n.Run
		}
	}
	return ""
}

const (
	libFile  = "name = \"lib\"\nimage = \"bookworm\"\nscript = \"make lib\"\n"
	toolFile = "name = \"tool\"\nimage = \"bookworm\"\nscript = \"make tool\"\n[[needs]]\njob = \"lib\"\nartifacts = [\"*.a\"]\n"
	pkgFile  = "name = \"pkg\"\nimage = \"bookworm\"\nscript = \"make pkg\"\n[[needs]]\njob = \"lib\"\n[[needs]]\njob = \"tool\"\n"
)

// TestGraphRunsNeedsFirst: executing a job runs what it needs first, each
// run waiting in dep-wait until its needs succeeded, and hands each the
// needed runs' artifacts its globs select; a second execute reuses
// (--reuse) or runs only the job; a changed library runs all three
// again; a failing one skips the rest, naming it.
func TestGraphRunsNeedsFirst(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, toolFile)
	g.add(t, pkgFile)

	pkg := g.exec(t, "pkg", false)
	if pkg.State != api.StateDepWait || pkg.Reused {
		t.Fatalf("pkg run %+v, want dep-wait", pkg)
	}
	libRun, toolRun := needRun(pkg, "lib"), needRun(pkg, "tool")
	if want := "dep-wait: lib run " + libRun + ", tool run " + toolRun; pkg.Waiting != want {
		t.Fatalf("waiting %q, want %q", pkg.Waiting, want)
	}
	if tool := g.run(t, toolRun); tool.State != api.StateDepWait || tool.Waiting != "dep-wait: lib run "+libRun {
		t.Fatalf("tool run %+v", tool)
	}
	g.take(t, "lib", 0, map[string]string{"lib.a": "LIB1", "notes.txt": "n"})
	a := g.take(t, "tool", 0, map[string]string{"bin/tool": "TOOL"})
	if got := needPaths(a); !slices.Equal(got, []string{"lib/lib.a"}) {
		t.Fatalf("tool got %v, want lib/lib.a only (its glob)", got)
	}
	a = g.take(t, "pkg", 0, map[string]string{"pkg.deb": "PKG"})
	if got := needPaths(a); !slices.Equal(got, []string{"lib/lib.a", "lib/notes.txt", "tool/bin/tool"}) {
		t.Fatalf("pkg got %v", got)
	}
	if a.RunID != pkg.ID {
		t.Fatalf("leased pkg run %s, executed %s", a.RunID, pkg.ID)
	}
	g.noneQueued(t)

	// --reuse: the same run answers, nothing runs.
	again := g.exec(t, "pkg", true)
	if !again.Reused || again.ID != pkg.ID || again.State != api.StateSucceeded {
		t.Fatalf("execute --reuse answered %+v, want pkg run %s reused", again, pkg.ID)
	}
	g.noneQueued(t)

	// Without --reuse only pkg runs, on the same needed runs.
	p2 := g.exec(t, "pkg", false)
	if p2.ID == pkg.ID || p2.State != api.StateQueued || needRun(p2, "lib") != libRun || needRun(p2, "tool") != toolRun {
		t.Fatalf("second execute %+v, want a queued pkg run on lib %s and tool %s", p2, libRun, toolRun)
	}
	if p2.Key != pkg.Key {
		t.Fatalf("same graph, keys %s and %s", pkg.Key, p2.Key)
	}
	g.take(t, "pkg", 0, nil)
	g.noneQueued(t)

	// A new revision of the library runs all three again.
	if err := g.modify(t, strings.Replace(libFile, "make lib", "make lib V=2", 1)); err != nil {
		t.Fatal(err)
	}
	p3 := g.exec(t, "pkg", true)
	if p3.Reused || p3.State != api.StateDepWait || needRun(p3, "lib") == libRun || needRun(p3, "tool") == toolRun || p3.Key == pkg.Key {
		t.Fatalf("after modify: %+v", p3)
	}
	g.take(t, "lib", 0, map[string]string{"lib.a": "LIB2"})
	g.take(t, "tool", 0, nil)
	a = g.take(t, "pkg", 0, nil)
	if a.Needs[0].Run != needRun(p3, "lib") {
		t.Fatalf("pkg got lib.a of run %s, want %s", a.Needs[0].Run, needRun(p3, "lib"))
	}

	// A failing library skips the rest, naming the failed run.
	if err := g.modify(t, strings.Replace(libFile, "make lib", "false", 1)); err != nil {
		t.Fatal(err)
	}
	p4 := g.exec(t, "pkg", false)
	failed := g.take(t, "lib", 2, nil)
	for _, id := range []string{needRun(p4, "tool"), p4.ID} {
		r := g.run(t, id)
		if r.State != api.StateSkipped || !strings.Contains(r.Error, "lib run "+failed.RunID+" failed") || !r.Finished.After(r.Created.Add(-1)) {
			t.Fatalf("run %s after lib failed: %+v", id, r)
		}
	}
	g.noneQueued(t)
}

// TestGraphCyclesRefused: a cycle is refused at add and modify, named.
func TestGraphCyclesRefused(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, toolFile)
	g.add(t, pkgFile)
	ctx := context.Background()
	for _, tt := range []struct {
		name, file string
		modify     bool
		want       string
	}{
		{"lib needs pkg", libFile + "[[needs]]\njob = \"pkg\"\n", true, "needs cycle: lib -> pkg -> lib"},
		{"lib needs tool", libFile + "[[needs]]\njob = \"tool\"\n", true, "needs cycle: lib -> tool -> lib"},
		{"needs a missing job", "name = \"x\"\nimage = \"bookworm\"\nscript = \"true\"\n[[needs]]\njob = \"nope\"\n", false, `job "x" needs "nope": no job "nope"`},
		{"on success of a missing job", "name = \"x\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:nope\"]\n", false, `no job "nope"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j, err := api.ParseJobFile([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if tt.modify {
				_, err = g.modifyJob(ctx, adminPrincipal, j.Name, j)
			} else {
				_, err = g.addJob(ctx, adminPrincipal, j)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
	// A job that needs itself never reaches the server's store.
	self := &api.Job{Name: "self", Image: "bookworm", Script: "true", Needs: []api.Need{{Job: "self"}}}
	if _, err := g.addJob(ctx, adminPrincipal, self); err == nil || !strings.Contains(err.Error(), "cycle self -> self") {
		t.Fatalf("add of a job needing itself: %v", err)
	}
	// Trigger cycles: a on success of b, b on success of a.
	g.add(t, "name = \"a\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	g.add(t, "name = \"b\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:a\"]\n")
	err := g.modify(t, "name = \"a\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:b\"]\n")
	if err == nil || !strings.Contains(err.Error(), "trigger cycle: a (on success of) b (on success of) a") {
		t.Fatalf("trigger cycle: %v", err)
	}
}

// TestGraphResumesAfterRestart: a need that ended while no server
// released its dependents (the server died between the two) is settled
// by the next server at start-up; a waiting run survives the restart.
func TestGraphResumesAfterRestart(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, toolFile)
	tool := g.exec(t, "tool", false)
	g.restart(t)
	if r := g.run(t, tool.ID); r.State != api.StateDepWait {
		t.Fatalf("after restart: %+v", r)
	}
	ctx := context.Background()
	a, err := g.lease(ctx, "h", &g.facts, false, 0)
	if err != nil || a == nil || a.Job.Name != "lib" {
		t.Fatalf("lease: %+v %v", a, err)
	}
	id, _ := parseRunID(a.RunID)
	// The result is stored, as complete stores it, but nothing after.
	if run, err := g.st.recordResult(ctx, "h", id, result{req: &api.ResultRequest{Fence: a.Fence}, final: api.StateSucceeded, ifCancelled: api.StateSucceeded, checks: "[]", now: g.now()}); err != nil || run == nil {
		t.Fatalf("record: %+v %v", run, err)
	}
	if r := g.run(t, tool.ID); r.State != api.StateDepWait {
		t.Fatalf("released without the server: %+v", r)
	}
	g.restart(t)
	if r := g.run(t, tool.ID); r.State != api.StateQueued {
		t.Fatalf("after the second restart: %+v", r)
	}
	g.take(t, "tool", 0, nil)
}

// TestGraphCancel: cancelling a needed run skips its dependents;
// cancelling a waiting run ends it at once.
func TestGraphCancel(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, toolFile)
	g.add(t, pkgFile)
	ctx := context.Background()
	pkg := g.exec(t, "pkg", false)
	if _, err := g.cancelRun(ctx, mustID(t, pkg.ID)); err != nil {
		t.Fatal(err)
	}
	if r := g.run(t, pkg.ID); r.State != api.StateCancelled {
		t.Fatalf("cancelled waiting run: %+v", r)
	}
	if _, err := g.cancelRun(ctx, mustID(t, needRun(pkg, "lib"))); err != nil {
		t.Fatal(err)
	}
	if r := g.run(t, needRun(pkg, "tool")); r.State != api.StateSkipped || !strings.Contains(r.Error, "cancelled") {
		t.Fatalf("tool after lib was cancelled: %+v", r)
	}
	g.noneQueued(t)
}

func mustID(t *testing.T, s string) int64 {
	t.Helper()
	id, err := parseRunID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestTriggers: on = ["success:lib"] executes the job after each
// successful run of lib, but not again for a lib run a run of it already
// builds on; on = ["image:bookworm"] after imagePublished.
func TestTriggers(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, "name = \"watch\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"success:lib\"]\n")
	g.add(t, "name = \"rebuild\"\nimage = \"bookworm\"\nscript = \"true\"\non = [\"image:bookworm\"]\n")
	g.add(t, "on = [\"success:lib\"]\n"+toolFile)
	ctx := context.Background()
	runsOf := func(job string) []api.Run {
		l, err := g.listRuns(ctx, adminPrincipal, job, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	g.exec(t, "lib", false)
	g.take(t, "lib", 0, map[string]string{"lib.a": "x"})
	w := runsOf("watch")
	if len(w) != 1 || w[0].Trigger != "on success:lib" || w[0].State != api.StateQueued {
		t.Fatalf("watch runs %+v", w)
	}
	tl := runsOf("tool")
	if len(tl) != 1 || tl[0].Trigger != "on success:lib" {
		t.Fatalf("tool runs %+v", tl)
	}
	g.take(t, "tool", 0, nil)
	g.take(t, "watch", 0, nil)
	if r := g.exec(t, "tool", false); needRun(r, "lib") == "" {
		t.Fatalf("tool run without its lib: %+v", r)
	}
	g.take(t, "tool", 0, nil)

	// A lib run executed as tool's need triggers no second tool run.
	if err := g.modify(t, strings.Replace(libFile, "make lib", "make lib V=3", 1)); err != nil {
		t.Fatal(err)
	}
	before := len(runsOf("tool"))
	g.exec(t, "tool", false)
	g.take(t, "lib", 0, nil)
	if n := len(runsOf("tool")); n != before+1 {
		t.Fatalf("tool has %d runs, want %d: the trigger ran it again", n, before+1)
	}
	g.take(t, "tool", 0, nil)
	g.take(t, "watch", 0, nil)
	g.noneQueued(t)

	runs := g.imagePublished(ctx, "bookworm", 1)
	if len(runs) != 1 || runs[0].Job != "rebuild" || runs[0].Trigger != "on image:bookworm" {
		t.Fatalf("imagePublished executed %+v", runs)
	}
	if runs := g.imagePublished(ctx, "trixie", 1); len(runs) != 0 {
		t.Fatalf("a trixie image executed %+v", runs)
	}
	g.take(t, "rebuild", 0, nil)
	// A removed job is no longer triggered.
	if err := g.removeJob(ctx, adminPrincipal, "rebuild"); err != nil {
		t.Fatal(err)
	}
	if runs := g.imagePublished(ctx, "bookworm", 1); len(runs) != 0 {
		t.Fatalf("a removed job was executed: %+v", runs)
	}
}

// TestRunKey: the key changes with what the run builds, and only then.
func TestRunKey(t *testing.T) {
	sha := func(c string) string { return strings.Repeat(c, 64) }
	base := func() *api.Job {
		return &api.Job{Name: "pkg", Image: "bookworm", Script: "true",
			Inputs: []api.Input{{Path: "a", SHA256: sha("a")}, {Path: "b", SHA256: sha("b")}},
			Needs:  []api.Need{{Job: "lib"}, {Job: "tool", Artifacts: []string{"*.a"}}}}
	}
	needs := map[string]string{"lib": "k1", "tool": "k2"}
	key := runKey("pkg", 3, base(), "", needs)
	for _, tt := range []struct {
		name   string
		rev    int
		digest string
		needs  map[string]string
		mutate func(j *api.Job)
		same   bool
	}{
		{"same", 3, "", needs, func(*api.Job) {}, true},
		{"inputs in another order", 3, "", needs, func(j *api.Job) { slices.Reverse(j.Inputs) }, true},
		{"needs in another order", 3, "", needs, func(j *api.Job) { slices.Reverse(j.Needs) }, true},
		{"script alone (same revision)", 3, "", needs, func(j *api.Job) { j.Script = "false" }, true},
		{"revision", 4, "", needs, func(*api.Job) {}, false},
		{"image", 3, "", needs, func(j *api.Job) { j.Image = "trixie" }, false},
		{"image digest", 3, sha("d"), needs, func(*api.Job) {}, false},
		{"input digest", 3, "", needs, func(j *api.Job) { j.Inputs[0].SHA256 = sha("c") }, false},
		{"input path", 3, "", needs, func(j *api.Job) { j.Inputs[0].Path = "c" }, false},
		{"need's key", 3, "", map[string]string{"lib": "k9", "tool": "k2"}, func(*api.Job) {}, false},
		{"need's globs", 3, "", needs, func(j *api.Job) { j.Needs[1].Artifacts = []string{"*.so"} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := base()
			tt.mutate(j)
			got := runKey("pkg", tt.rev, j, tt.digest, tt.needs)
			if (got == key) != tt.same {
				t.Fatalf("key %s vs %s, want same=%v", got, key, tt.same)
			}
		})
	}
}

// TestScheduleOfJobWithNeeds: a schedule of a job with needs fires
// through its graph: what it needs runs first.
func TestScheduleOfJobWithNeeds(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	g := newGraphServer(t, WithClock(clock.now))
	g.add(t, libFile)
	g.add(t, "schedule = \"@hourly\"\n"+toolFile)
	clock.add(2 * time.Hour)
	if err := g.fireSchedules(context.Background()); err != nil {
		t.Fatal(err)
	}
	runs, err := g.listRuns(context.Background(), adminPrincipal, "tool", 0, 0)
	if err != nil || len(runs) != 1 || runs[0].State != api.StateDepWait || runs[0].Trigger != "schedule" {
		t.Fatalf("tool runs %+v %v", runs, err)
	}
	g.take(t, "lib", 0, map[string]string{"libfoo.a": "x"})
	if a := g.take(t, "tool", 0, nil); len(a.Needs) != 1 || a.Needs[0].Path != "libfoo.a" {
		t.Fatalf("scheduled tool got %+v", a.Needs)
	}
}

// BenchmarkGraphDispatch measures, in one process on SQLite on disk, an
// execute and the lease of its run (the dispatch path, without HTTP) of a
// job that needs nothing and of the root of a graph of 10 jobs whose 9
// needs succeeded before (each with 3 artifacts): the difference is what
// resolving needs adds (the key lookups at execute, the needed artifacts
// at lease). docs/benchmarks.md.
//
//	go test -run '^$' -bench BenchmarkGraphDispatch -benchtime 2000x ./scheduler/
func BenchmarkGraphDispatch(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("graph-%d", n), func(b *testing.B) {
			cfg := config.DefaultServer()
			cfg.DataDir = b.TempDir()
			ctx := context.Background()
			s, err := New(ctx, cfg, WithLogger(quiet))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			facts := api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1, Images: []api.ImageFact{{Name: "bookworm", Versions: []string{"1"}}}}
			tok, err := s.createEnrollmentToken(ctx, &api.EnrollmentTokenRequest{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.enroll(ctx, &principal{kind: kindEnrollment, hash: hashToken(tok.Token)}, &api.EnrollRequest{Name: "h", Facts: facts}); err != nil {
				b.Fatal(err)
			}
			root := &api.Job{Name: "root", Image: "bookworm", Script: "true"}
			for i := range n - 1 {
				dep := &api.Job{Name: fmt.Sprintf("dep%d", i), Image: "bookworm", Script: "true"}
				if _, err := s.addJob(ctx, adminPrincipal, dep); err != nil {
					b.Fatal(err)
				}
				root.Needs = append(root.Needs, api.Need{Job: dep.Name})
			}
			if _, err := s.addJob(ctx, adminPrincipal, root); err != nil {
				b.Fatal(err)
			}
			finish := func(a *api.Assignment, arts []api.Artifact) {
				id, _ := parseRunID(a.RunID)
				if _, err := s.complete(ctx, "h", id, &api.ResultRequest{Fence: a.Fence, Artifacts: arts}); err != nil {
					b.Fatal(err)
				}
			}
			// The needs run once, each leaving 3 artifacts.
			if _, err := s.execute(ctx, adminPrincipal, "root", api.ExecuteRequest{}); err != nil {
				b.Fatal(err)
			}
			for range n {
				a, err := s.lease(ctx, "h", &facts, false, 0)
				if err != nil || a == nil {
					b.Fatalf("lease: %v", err)
				}
				var arts []api.Artifact
				for k := range 3 {
					content := []byte(a.RunID + "/" + strconv.Itoa(k))
					sum := sha256.Sum256(content)
					sha := hex.EncodeToString(sum[:])
					if _, _, err := s.blobs.Write(ctx, sha, "bench", 0, int64(len(content)), bytes.NewReader(content), false); err != nil {
						b.Fatal(err)
					}
					arts = append(arts, api.Artifact{Path: fmt.Sprintf("f%d.deb", k), Size: int64(len(content)), SHA256: sha})
				}
				finish(a, arts)
			}
			var lat []time.Duration
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := s.execute(ctx, adminPrincipal, "root", api.ExecuteRequest{}); err != nil {
					b.Fatal(err)
				}
				a, err := s.lease(ctx, "h", &facts, false, 0)
				if err != nil || a == nil || len(a.Needs) != 3*(n-1) {
					b.Fatalf("lease: %+v %v", a, err)
				}
				lat = append(lat, time.Since(t0))
				b.StopTimer()
				finish(a, nil)
				b.StartTimer()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// TestGraphStaleCache: a job changed behind this server's back (as by
// another replica) makes the graph's write conflict once; the execute
// walks the graph again from the database and queues the new revision.
func TestGraphStaleCache(t *testing.T) {
	g := newGraphServer(t)
	g.add(t, libFile)
	g.add(t, toolFile)
	g.exec(t, "tool", false)
	g.take(t, "lib", 0, nil)
	g.take(t, "tool", 0, nil)
	// Another replica's modify: the database changes, this cache not.
	j, err := api.ParseJobFile([]byte(strings.Replace(libFile, "make lib", "make lib V=9", 1)))
	if err != nil {
		t.Fatal(err)
	}
	j2 := *j
	other := ownerPrincipal(ownerAdmin)
	spec, _ := json.Marshal(&j2)
	if err := g.st.addRevision(context.Background(), other, newJob{name: "lib", spec: string(spec), now: g.now()}); err != nil {
		t.Fatal(err)
	}
	r := g.exec(t, "tool", true)
	if r.Reused || r.State != api.StateDepWait {
		t.Fatalf("execute on a stale cache: %+v", r)
	}
	if a := g.take(t, "lib", 0, nil); a.Revision != 2 {
		t.Fatalf("lib revision %d ran, want 2", a.Revision)
	}
}

// TestGraphPinsServerHeldImages: a graph's runs are pinned to the latest
// server-held version of their image, like any run, and a new version
// changes their keys (and their dependents'): the next execute runs all
// of them again.
func TestGraphPinsServerHeldImages(t *testing.T) {
	g := newGraphServer(t)
	ctx := context.Background()
	publish := func(digest string) {
		t.Helper()
		v := api.ImageVersion{Name: "bookworm", Arch: "amd64", OS: "linux", TarDigest: "sha256:" + strings.Repeat(digest, 64), TarSize: 4096,
			Blob: strings.Repeat(digest, 64), BlobSize: 5}
		if _, _, err := g.st.publishImage(ctx, v, g.now()); err != nil {
			t.Fatal(err)
		}
	}
	publish("a")
	g.add(t, libFile)
	g.add(t, toolFile)
	tool := g.exec(t, "tool", false)
	lib := g.run(t, needRun(tool, "lib"))
	if lib.Image != "bookworm@1" || lib.ImageDigest != "sha256:"+strings.Repeat("a", 64) {
		t.Fatalf("needed run not pinned: %+v", lib)
	}
	g.take(t, "lib", 0, nil)
	if r := g.run(t, tool.ID); r.State != api.StateQueued || r.Image != "bookworm@1" {
		t.Fatalf("released tool run: %+v", r)
	}
	g.take(t, "tool", 0, nil)
	if r := g.exec(t, "tool", true); !r.Reused {
		t.Fatalf("same image version, not reused: %+v", r)
	}
	publish("b")
	r := g.exec(t, "tool", true)
	if r.Reused || r.Key == tool.Key || needRun(r, "lib") == lib.ID {
		t.Fatalf("a new image version reused the old runs: %+v", r)
	}
	if l := g.run(t, needRun(r, "lib")); l.Image != "bookworm@2" {
		t.Fatalf("lib pinned to %q, want bookworm@2", l.Image)
	}
}

package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// finish uploads files (path -> content) for a leased run and reports it.
func finish(t *testing.T, w *api.Client, a *api.Assignment, files map[string]string, checks ...api.Check) *api.Run {
	t.Helper()
	ctx := context.Background()
	var arts []api.Artifact
	for p, body := range files {
		b := []byte(body)
		if err := w.UploadArtifact(ctx, a.RunID, a.Fence, sha(b), bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
		arts = append(arts, api.Artifact{Path: p, Size: int64(len(b)), Mode: 0o644, SHA256: sha(b)})
	}
	r, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, Artifacts: arts, Checks: checks, Snapshot: "busybox@20260101"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func noLease(t *testing.T, w *api.Client, facts api.Facts) {
	t.Helper()
	a, err := w.Lease(context.Background(), api.LeaseRequest{Facts: facts, Wait: api.Duration(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if a != nil {
		t.Fatalf("leased run %s (member %d of group %s) to a host that holds another member", a.RunID, a.Member, a.Group)
	}
}

// TestGroupOnDistinctHosts: the members of a group go to distinct hosts
// while one is free, carry their variations and the host's facts, and a
// group whose members left the same files is reproducible.
func TestGroupOnDistinctHosts(t *testing.T) {
	srv := testsupport.StartServer(t, `reproduce_wait = "1h"`)
	ctx := context.Background()
	admin := srv.Client()
	facts := hostFacts("busybox")
	facts.Details = map[string]string{"kernel": "6.1.0-test", "cpus": "2"}
	w1 := enroll(t, srv, "h1", nil, facts)
	w2 := enroll(t, srv, "h2", nil, facts)
	addJob(t, admin, "name = \"twin\"\nimage = \"busybox\"\nscript = \"true\"\nreproduce = 2\n")

	out, errOut, code := srv.Run("job", "execute", "twin")
	if code != 0 {
		t.Fatalf("job execute: %d %s", code, errOut)
	}
	group := strings.TrimSpace(out)
	a1 := mustLease(t, w1, facts, time.Second)
	noLease(t, w1, facts) // h1 has two slots, but holds a member already
	a2 := mustLease(t, w2, facts, time.Second)
	if a1.Group != group || a2.Group != group || a1.Member == a2.Member {
		t.Fatalf("assignments: group %q member %d, group %q member %d; want group %q, distinct members", a1.Group, a1.Member, a2.Group, a2.Member, group)
	}
	base, varied := a1, a2
	if a1.Member != 0 {
		base, varied = a2, a1
	}
	tests := []struct{ key, base, varied string }{
		{"TZ", "UTC", "Etc/GMT-14"},
		{"LANG", "C.UTF-8", "fr_CH.UTF-8"},
		{api.VariationUmask, "022", "002"},
		{api.VariationUser, "0:0", "1000:1000"},
		{api.VariationCwd, "/work", "/work/build-b"},
		{api.VariationHostname, base.RunID, varied.RunID},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if base.Variations[tt.key] != tt.base || varied.Variations[tt.key] != tt.varied {
				t.Fatalf("%s: member 0 %q, member 1 %q; want %q, %q", tt.key, base.Variations[tt.key], varied.Variations[tt.key], tt.base, tt.varied)
			}
		})
	}
	if e := base.Variations["SOURCE_DATE_EPOCH"]; e == "" || e != varied.Variations["SOURCE_DATE_EPOCH"] {
		t.Fatalf("SOURCE_DATE_EPOCH %q vs %q: must be the group's, the same for all", e, varied.Variations["SOURCE_DATE_EPOCH"])
	}

	finish(t, w1, a1, map[string]string{"a.txt": "same\n", "sub/b.bin": "also same"})
	g, err := admin.GetGroup(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if g.Verdict != nil {
		t.Fatalf("verdict before every member ended: %+v", g.Verdict)
	}
	finish(t, w2, a2, map[string]string{"a.txt": "same\n", "sub/b.bin": "also same"},
		api.Check{Name: "lint", Stage: "post", ExitCode: 0})
	g, err = admin.GetGroup(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if g.Verdict == nil || !g.Verdict.Reproducible || g.Verdict.SameHost || len(g.Members) != 2 {
		t.Fatalf("group: %+v verdict %+v", g, g.Verdict)
	}
	r, err := admin.GetRun(ctx, a2.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if r.HostFacts == nil || r.HostFacts.Details["kernel"] != "6.1.0-test" || r.Snapshot != "busybox@20260101" ||
		len(r.Checks) != 1 || r.Checks[0].Name != "lint" || r.Variations[api.VariationUser] != "1000:1000" {
		t.Fatalf("run keeps facts, snapshot, checks, variations: %+v", r)
	}
	hosts, err := admin.ListHosts(ctx)
	if err != nil || len(hosts) != 2 || hosts[0].Facts.Details["kernel"] != "6.1.0-test" {
		t.Fatalf("hosts keep details: %+v %v", hosts, err)
	}
	members, err := admin.ListGroupRuns(ctx, group, 0)
	if err != nil || len(members) != 2 {
		t.Fatalf("runs of group: %+v %v", members, err)
	}
	if _, _, code := srv.Run("run", "group", group); code != 0 {
		t.Fatalf("run group of a reproducible group exits %d", code)
	}
}

// TestGroupSameHostAndDiffers: with a single host, the second member
// waits reproduce_wait and then shares the host; differing and missing
// files make the verdict name them. Also: artifact find, observe's check
// exit, and compare's inputs.
func TestGroupSameHostAndDiffers(t *testing.T) {
	srv := testsupport.StartServer(t, `reproduce_wait = "1s"`)
	ctx := context.Background()
	admin := srv.Client()
	facts := hostFacts("busybox")
	w := enroll(t, srv, "only", nil, facts)
	addJob(t, admin, "name = \"clock\"\nimage = \"busybox\"\nscript = \"date > /out/date.txt\"\n")

	out, errOut, code := srv.Run("job", "execute", "clock", "--reproduce", "2")
	if code != 0 {
		t.Fatalf("job execute --reproduce: %d %s", code, errOut)
	}
	group := strings.TrimSpace(out)
	a1 := mustLease(t, w, facts, time.Second)
	noLease(t, w, facts)
	time.Sleep(1100 * time.Millisecond) // past reproduce_wait
	a2 := mustLease(t, w, facts, time.Second)
	if a1.Group != group || a2.Group != group {
		t.Fatalf("groups %q %q, want %q", a1.Group, a2.Group, group)
	}
	finish(t, w, a1, map[string]string{"date.txt": "Mon\n", "same.txt": "x", "only-one.txt": "y"})
	finish(t, w, a2, map[string]string{"date.txt": "Tue\n", "same.txt": "x"},
		api.Check{Name: "lint", Stage: "post", ExitCode: 1, Error: "exit status 1"})

	g, err := admin.GetGroup(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	v := g.Verdict
	if v == nil || v.Reproducible || !v.SameHost || len(v.Differs) != 1 || v.Differs[0] != "date.txt" ||
		len(v.Missing) != 1 || v.Missing[0].Path != "only-one.txt" || v.Missing[0].MissingIn[0] != a2.RunID {
		t.Fatalf("verdict: %+v", v)
	}
	out, _, code = srv.Run("run", "group", group)
	if code != 4 || !strings.Contains(out, "date.txt") || !strings.Contains(out, "same host") {
		t.Fatalf("run group: exit %d\n%s", code, out)
	}
	out, _, code = srv.Run("run", "info", a1.RunID)
	if code != 0 || !strings.Contains(out, "NOT reproducible") || !strings.Contains(out, "differs:") {
		t.Fatalf("run info of a member: exit %d\n%s", code, out)
	}

	t.Run("observe exits 3 for a failed check", func(t *testing.T) {
		_, errOut, code := srv.Run("run", "observe", a2.RunID)
		if code != 3 || !strings.Contains(errOut, "lint") {
			t.Fatalf("observe: exit %d, stderr %q; want 3 naming the check", code, errOut)
		}
		if _, _, code := srv.Run("run", "observe", a1.RunID); code != 0 {
			t.Fatalf("observe of a run without failed checks: exit %d", code)
		}
	})

	t.Run("artifact find", func(t *testing.T) {
		out, errOut, code := srv.Run("artifact", "find", sha([]byte("x")), "--output", "json")
		if code != 0 {
			t.Fatalf("artifact find: %d %s", code, errOut)
		}
		var refs []api.ArtifactRef
		if err := json.Unmarshal([]byte(out), &refs); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, r := range refs {
			if r.Path != "same.txt" || r.Job != "clock" {
				t.Fatalf("find returned %+v", r)
			}
			got[r.Run] = true
		}
		if len(refs) != 2 || !got[a1.RunID] || !got[a2.RunID] {
			t.Fatalf("find: %+v, want runs %s and %s", refs, a1.RunID, a2.RunID)
		}
		if refs, err := admin.FindArtifacts(ctx, sha([]byte("nowhere"))); err != nil || len(refs) != 0 {
			t.Fatalf("find of an unknown sha256: %+v %v", refs, err)
		}
		if _, err := admin.FindArtifacts(ctx, "XYZ"); err == nil {
			t.Fatal("a malformed sha256 was accepted")
		}
	})

	t.Run("compare", func(t *testing.T) {
		out, errOut, code := srv.Run("run", "compare", a1.RunID, a2.RunID, "--output", "json")
		if code != 0 {
			t.Fatalf("compare: %d %s", code, errOut)
		}
		var c api.Comparison
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, d := range c.Artifacts {
			status[d.Path] = d.Status
		}
		want := map[string]string{"date.txt": api.ArtifactDiffers, "same.txt": api.ArtifactSame, "only-one.txt": api.ArtifactOnlyA}
		for p, s := range want {
			if status[p] != s {
				t.Errorf("%s: %q, want %q", p, status[p], s)
			}
		}
		if c.Identical || len(c.Variations) == 0 {
			t.Fatalf("comparison: %+v", c)
		}
	})
}

func TestExecuteReproduceValidation(t *testing.T) {
	srv := testsupport.StartServer(t)
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"busybox\"\nscript = \"true\"\n")
	for _, n := range []int{1, -2, 17} {
		if _, err := srv.Client().ExecuteJobWith(context.Background(), "j", api.ExecuteRequest{Reproduce: n}); err == nil {
			t.Errorf("reproduce %d accepted", n)
		}
	}
	r, err := srv.Client().ExecuteJobWith(context.Background(), "j", api.ExecuteRequest{})
	if err != nil || r.Group != "" {
		t.Fatalf("plain execute: %+v %v", r, err)
	}
}

// TestStaleMemberLeavesHostFree: a queue may hold a stale entry, a run
// already leased elsewhere (on PostgreSQL a leased notification that
// overtook the queued one, or a queue reload racing a claim). Handed to
// host h2 and missed at the claim, it must not leave h2 placed in its
// reproduce group: h2 then gets the group's other member at once, not
// after reproduce_wait. (The cause of TestReplicasPlaceGroupApart's and
// TestGroupOnDistinctHosts's rare "lease: no run within ...".)
func TestStaleMemberLeavesHostFree(t *testing.T) {
	srv := testsupport.StartInProcessServer(t, `reproduce_wait = "1h"`)
	ctx := context.Background()
	facts := hostFacts("busybox")
	host := func(name string) *api.Client {
		et, err := srv.Admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := api.NewClient(srv.URL, et.Token).Enroll(ctx, api.EnrollRequest{Name: name, Facts: facts})
		if err != nil {
			t.Fatal(err)
		}
		return api.NewClient(srv.URL, r.Token)
	}
	h1, h2 := host("h1"), host("h2")
	if _, err := srv.Admin.AddJob(ctx, &api.Job{Name: "twin", Image: "busybox", Script: "true", Reproduce: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ExecuteJobWith(ctx, "twin", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	// 20 s: a guard against a hang, never waited for when it works.
	first := mustLease(t, h1, facts, 20*time.Second)
	id, _ := strconv.ParseInt(first.RunID, 10, 64)
	grp, _ := strconv.ParseInt(first.Group, 10, 64)
	srv.QueueStale(id, grp, first.Job)
	second := mustLease(t, h2, facts, 20*time.Second)
	if second.Group != first.Group || second.Member == first.Member {
		t.Fatalf("h2 leased group %s member %d after a stale entry of member %d; want the group's other member", second.Group, second.Member, first.Member)
	}
}

//go:build linux

package worker_test

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

// addWorkerWithHooks is addWorker (on the server's own URL) with extra
// TOML, such as [hooks.NAME] tables, in the host's config.
func (cl *cluster) addWorkerWithHooks(t *testing.T, name, extra string, images ...string) *node {
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, "[server]\nheartbeat = \"300ms\"\nslots = 1\n"+extra)
	for _, im := range images {
		h.MustKiln(t, "image", "create", "-n", im, "-m", "busybox", "-q")
	}
	testsupport.EnrollWorker(t, cl.srv, h, cl.srv.URL, name, "")
	return &node{host: h, proc: testsupport.StartWorker(t, h), name: name}
}

// waitReport polls a group until its diffoscope task has ended.
func (cl *cluster) waitReport(t *testing.T, id string, d time.Duration) *api.Group {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		g, err := cl.client().GetGroup(context.Background(), id)
		if err == nil && g.Report != nil && api.Terminal(g.Report.State) {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s: no finished diffoscope report in %s; last %+v, err %v\nserver log:\n%s", id, d, g, err, tail(cl.srv.Log()))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// diffoscopeScript stands in for Debian's diffoscope (not installed
// here): `diff -r` of the two trees into the report, exiting 1 on
// differences as diffoscope does, plus the hook's environment.
const diffoscopeScript = `#!/bin/sh
diff -r "$KILN_ARTIFACTS_A" "$KILN_ARTIFACTS_B" > "$KILN_REPORT"
rc=$?
echo "stage=$KILN_STAGE run=$KILN_RUN job=$KILN_JOB a=$KILN_RUN_A b=$KILN_RUN_B token=${KILN_TOKEN:-none}" >> "$KILN_REPORT"
echo "compared $KILN_RUN_A and $KILN_RUN_B"
exit $rc
`

// TestDiffoscopeReport: two real workers run twin groups; only one host
// defines a diffoscope hook. The unreproducible group's report is made
// there from the two members' differing files (and only those) and stored
// as the group's report; the reproducible group gets none.
func TestDiffoscopeReport(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	script := filepath.Join(t.TempDir(), "kiln-diffoscope")
	if err := os.WriteFile(script, []byte(diffoscopeScript), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := cl.addWorker(t, "plain", "", "", "busybox")
	differ := cl.addWorkerWithHooks(t, "differ", `[hooks.diffoscope]
stage = "post"
command = [`+"\""+script+"\""+`]
timeout = "1m"
`, "busybox")
	stamp := cl.addJob(t, `name = "stamp"
image = "busybox"
script = "set -e; hostname > /out/host.txt; echo same > /out/same.txt; mkdir /out/sub; echo nested-$(hostname) > /out/sub/n.txt"
`)
	det := cl.addJob(t, `name = "fixed"
image = "busybox"
script = "echo fixed > /out/a.txt"
`)
	cl.waitHeartbeats(t, plain.name, differ.name)
	ctx := context.Background()
	stampGroup, detGroup := cl.executeTwins(t, stamp), cl.executeTwins(t, det)

	g := cl.waitReport(t, stampGroup, 3*time.Minute)
	if g.Verdict == nil || g.Verdict.Reproducible {
		t.Fatalf("verdict of the hostname job: %+v", g.Verdict)
	}
	a, b := g.Members[0], g.Members[1]
	rep := g.Report
	if rep.State != api.StateSucceeded || rep.Host != differ.name || rep.Report == nil || rep.RunA != a.ID || rep.RunB != b.ID {
		t.Fatalf("report %+v (members %s, %s)\nconsole:\n%s\nworker log:\n%s", rep, a.ID, b.ID, cl.console(t, rep.Run), tail(differ.proc.Log()))
	}
	var buf strings.Builder
	if err := cl.client().DownloadBlob(ctx, rep.Report.SHA256, &buf); err != nil {
		t.Fatal(err)
	}
	report := buf.String()
	for _, want := range []string{
		"host.txt", "< " + a.ID + "\n", "> " + b.ID + "\n", // the differing file and its two contents
		"n.txt", "< nested-" + a.ID, "> nested-" + b.ID, // a nested one
		"stage=post run=" + rep.Run + " job=stamp a=" + a.ID + " b=" + b.ID, // the hook's environment
		"token=none", // the worker's credential is not passed on
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "same.txt") {
		t.Errorf("report names a file whose content is the same in both runs:\n%s", report)
	}
	task, err := cl.client().GetRun(ctx, rep.Run)
	if err != nil || len(task.Checks) != 1 || task.Checks[0].ExitCode != 1 || task.Checks[0].Failed() {
		t.Fatalf("task run: %+v %v; want one passed check with diff's exit 1", task, err)
	}
	if c := cl.console(t, rep.Run); !strings.Contains(c, "[hook diffoscope] compared "+a.ID+" and "+b.ID) {
		t.Errorf("task console lacks the hook's output:\n%s", c)
	}
	out, _, code := cl.srv.Run("run", "group", stampGroup)
	if code != 4 || !strings.Contains(out, "diffoscope.txt of run "+rep.Run) {
		t.Fatalf("run group: exit %d\n%s", code, out)
	}

	dg := cl.waitGroup(t, detGroup, 3*time.Minute)
	if !dg.Verdict.Reproducible || dg.Report != nil {
		t.Fatalf("reproducible group: verdict %+v, report %+v", dg.Verdict, dg.Report)
	}
	runs, err := cl.client().ListRuns(ctx, det, 0)
	if err != nil || len(runs) != 2 {
		t.Fatalf("runs of the reproducible job: %d %v; want its two members and no task", len(runs), err)
	}
	if entries, err := os.ReadDir(filepath.Join(differ.host.Dir, "diffoscope")); err == nil && len(entries) > 0 {
		t.Errorf("the task's files are left on the host: %v", entries)
	}
	cl.assertNoLeftovers(t, plain, differ)
	// Stopped workers take their warm clones (and those mounts) with them.
	plain.proc.Term()
	differ.proc.Term()
	cl.assertClean(t, false, plain, differ)
}

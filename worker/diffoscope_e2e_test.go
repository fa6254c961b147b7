//go:build linux

package worker_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// addWorkerWithHooks is addWorker (on the server's own URL) with extra
// TOML in the host's config: run holds keys of its [run] table, extra
// whole tables, such as [hooks.NAME].
func (cl *cluster) addWorkerWithHooks(t *testing.T, name, run, extra string, images ...string) *node {
	h := testsupport.NewHost(t, cl.kiln, cl.ctrd, run+"\n[server]\nheartbeat = \"300ms\"\nslots = 1\n"+extra)
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
	differ := cl.addWorkerWithHooks(t, "differ", "", `[hooks.diffoscope]
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

// failingDiffoscope goes wrong in the way its task's job name says;
// "hang" and "timeout" leave a child behind in the hook's sandbox.
const failingDiffoscope = `#!/bin/sh
echo "hook of $KILN_JOB"
case "$KILN_JOB" in
error) diff -r "$KILN_ARTIFACTS_A" "$KILN_ARTIFACTS_B" > "$KILN_REPORT"; echo "diffoscope: internal error" >&2; exit 2 ;;
silent0) exit 0 ;;
silent1) exit 1 ;;
hang|timeout) sleep 600 & echo "child started"; wait ;;
*) diff -r "$KILN_ARTIFACTS_A" "$KILN_ARTIFACTS_B" > "$KILN_REPORT"; exit 1 ;;
esac
`

// TestDiffoscopeFailures: a diffoscope task whose hook fails, hangs past
// its timeout, writes no report, is cancelled, or whose files exceed the
// host's diffoscope_max ends without a report, with an error naming the
// hook and the reason, shown by `kiln run group`; the hook's processes
// and the task's files are gone afterwards.
func TestDiffoscopeFailures(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	script := filepath.Join(t.TempDir(), "kiln-diffoscope")
	if err := os.WriteFile(script, []byte(failingDiffoscope), 0o755); err != nil {
		t.Fatal(err)
	}
	hookTable := func(timeout string) string {
		return "[hooks.diffoscope]\nstage = \"post\"\ncommand = [\"" + script + "\"]\ntimeout = \"" + timeout + "\"\n"
	}
	// One host with a hook at a time takes the tasks; each stops before
	// the next starts.
	hosts := []struct{ name, run, extra string }{
		{"hooked", "", hookTable("1m")},
		{"impatient", "", hookTable("1s")},
		{"capped", `diffoscope_max = "1"`, hookTable("1m")},
	}
	hook := "diffoscope hook (" + script + ")"
	tests := []struct {
		job    string
		host   int
		cancel bool   // cancel the task once the hook runs
		state  string // of the task run
		err    string // in the task run's error
		check  *api.Check
	}{
		{job: "error", state: api.StateFailed, err: hook + " failed: exit status 2",
			check: &api.Check{ExitCode: 2, Error: "exit status 2"}},
		{job: "silent0", state: api.StateFailed, err: hook + " exited 0 without writing $KILN_REPORT",
			check: &api.Check{ExitCode: 0, Error: "exited 0 without writing $KILN_REPORT"}},
		{job: "silent1", state: api.StateFailed, err: hook + " exited 1 without writing $KILN_REPORT",
			check: &api.Check{ExitCode: 1, Error: "exited 1 without writing $KILN_REPORT"}},
		{job: "hang", cancel: true, state: api.StateCancelled, err: "cancel requested: " + hook + " stopped: context canceled",
			check: &api.Check{ExitCode: -1, Error: "cancelled"}},
		{job: "timeout", host: 1, state: api.StateFailed, err: hook + " failed: timed out after 1s",
			check: &api.Check{ExitCode: -1, Error: "timed out after 1s"}},
		{job: "toolarge", host: 2, state: api.StateFailed, err: "bytes, over this host's diffoscope_max of 1 bytes"},
	}
	plain := cl.addWorker(t, "plain", "", "", "busybox")
	for _, tt := range tests {
		cl.addJob(t, "name = \""+tt.job+"\"\nimage = \"busybox\"\nscript = \"hostname > /out/host.txt\"\n")
	}
	ctx := context.Background()
	var cur *node
	curHost := -1
	for _, tt := range tests {
		// With the test's t, not the subtest's: the host outlives a case.
		if tt.host != curHost {
			if cur != nil {
				cur.proc.Term()
			}
			h := hosts[tt.host]
			cur, curHost = cl.addWorkerWithHooks(t, h.name, h.run, h.extra, "busybox"), tt.host
			cl.waitHeartbeats(t, plain.name, cur.name)
		}
		t.Run(tt.job, func(t *testing.T) {
			group := cl.executeTwins(t, tt.job)
			if tt.cancel {
				g := cl.waitGroup(t, group, 3*time.Minute)
				deadline := time.Now().Add(3 * time.Minute)
				for {
					if g != nil && g.Report != nil && g.Report.Run != "" {
						// Not followed: the task runs until cancelled.
						lc, err := cl.client().ReadLog(ctx, g.Report.Run, 0, 0, 0)
						if err == nil && strings.Contains(string(lc.Data), "[hook diffoscope] child started") {
							break
						}
					}
					if time.Now().After(deadline) {
						t.Fatalf("the hook never started\nworker log:\n%s", tail(cur.proc.Log()))
					}
					time.Sleep(100 * time.Millisecond)
					g, _ = cl.client().GetGroup(ctx, group)
				}
				if _, err := cl.client().CancelRun(ctx, g.Report.Run); err != nil {
					t.Fatal(err)
				}
			}
			g := cl.waitReport(t, group, 3*time.Minute)
			rep := g.Report
			task, err := cl.client().GetRun(ctx, rep.Run)
			if err != nil {
				t.Fatal(err)
			}
			console := cl.console(t, rep.Run)
			if rep.State != tt.state || rep.Report != nil || len(task.Artifacts) != 0 || !strings.Contains(rep.Error, tt.err) || rep.Host != cur.name {
				t.Fatalf("report %+v, task artifacts %+v; want %s with error %q on %s\nconsole:\n%s\nworker log:\n%s",
					rep, task.Artifacts, tt.state, tt.err, cur.name, console, tail(cur.proc.Log()))
			}
			switch {
			case tt.check == nil && len(task.Checks) != 0:
				t.Errorf("checks %+v; want none, the hook must not run", task.Checks)
			case tt.check != nil && (len(task.Checks) != 1 || task.Checks[0].Name != api.DiffoscopeHook ||
				task.Checks[0].ExitCode != tt.check.ExitCode || task.Checks[0].Error != tt.check.Error):
				t.Errorf("checks %+v; want one %s check exiting %d with %q", task.Checks, api.DiffoscopeHook, tt.check.ExitCode, tt.check.Error)
			}
			if ran := strings.Contains(console, "[hook diffoscope] hook of "+tt.job); ran != (tt.check != nil) {
				t.Errorf("hook ran: %v, want %v; console:\n%s", ran, tt.check != nil, console)
			}
			if tt.job == "error" && !strings.Contains(console, "[hook diffoscope] diffoscope: internal error") {
				t.Errorf("console lacks the hook's stderr:\n%s", console)
			}
			out, _, code := cl.srv.Run("run", "group", group)
			assertReportLine(t, out, tt.state+": "+task.Error+" (task run "+rep.Run+")")
			if code != 4 {
				t.Errorf("run group: exit %d, want 4", code)
			}
			// The hook's child went with its sandbox.
			cl.assertNoLeftovers(t, cur)
			if entries, err := os.ReadDir(filepath.Join(cur.host.Dir, "diffoscope")); err == nil && len(entries) > 0 {
				t.Errorf("the task's files are left on the host: %v", entries)
			}
		})
	}
	cl.assertNoLeftovers(t, plain, cur)
	plain.proc.Term()
	cur.proc.Term()
}

// assertReportLine finds the "diffoscope report:" line of `kiln run
// group` and checks its text.
func assertReportLine(t *testing.T, out, want string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "diffoscope report:"); ok {
			if got := strings.TrimSpace(v); got != want {
				t.Errorf("run group: diffoscope report %q, want %q", got, want)
			}
			return
		}
	}
	t.Errorf("run group shows no diffoscope report line:\n%s", out)
}

// hostileDiffoscope stands in for a diffoscope that a crafted artifact
// took over: it tries to reach what the hook's sandbox must keep from it
// and writes what it managed into the report.
const hostileDiffoscope = `#!/bin/bash
r="$KILN_REPORT"
try() { if eval "$1" >/dev/null 2>&1; then echo "ESCAPED: $1"; else echo "held: $1"; fi >> "$r"; }
try 'echo x > @HOSTDIR@/pwned'
try 'cat @HOSTDIR@/secret'
try 'ls @DATADIR@'
try 'cat /etc/shadow'
try 'echo x > /usr/pwned'
try 'echo x > /pwned'
try 'echo x > "$KILN_ARTIFACTS_A/host.txt"'
try 'exec 3<>/dev/tcp/127.0.0.1/@PORT@'
echo "uid=$(id -u)" >> "$r"
grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status >> "$r"
diff -r "$KILN_ARTIFACTS_A" "$KILN_ARTIFACTS_B" >> "$r"
exit 1
`

// TestDiffoscopeSandboxed: the diffoscope hook runs over files hostile
// jobs wrote, so it runs in a sandbox: a hook that tries to write the
// host's files or the runs' files, read a host secret or the worker's data
// dir, or reach a port on the host's loopback gets nowhere, runs as nobody
// under seccomp with no capability, and its report still arrives.
func TestDiffoscopeSandboxed(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "secret"), []byte("host secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	plain := cl.addWorker(t, "plain", "", "", "busybox")
	script := filepath.Join(t.TempDir(), "kiln-diffoscope")
	hook := "[hooks.diffoscope]\nstage = \"post\"\ncommand = [\"" + script + "\"]\ntimeout = \"2m\"\n"
	differ := cl.addWorkerWithHooks(t, "differ", "", hook, "busybox")
	body := strings.NewReplacer("@HOSTDIR@", hostDir, "@DATADIR@", differ.host.Dir,
		"@PORT@", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)).Replace(hostileDiffoscope)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	stamp := cl.addJob(t, "name = \"stamp\"\nimage = \"busybox\"\nscript = \"hostname > /out/host.txt\"\n")
	cl.waitHeartbeats(t, plain.name, differ.name)
	g := cl.waitReport(t, cl.executeTwins(t, stamp), 3*time.Minute)
	rep := g.Report
	if rep.State != api.StateSucceeded || rep.Report == nil {
		t.Fatalf("report %+v\nconsole:\n%s\nworker log:\n%s", rep, cl.console(t, rep.Run), tail(differ.proc.Log()))
	}
	var buf strings.Builder
	if err := cl.client().DownloadBlob(context.Background(), rep.Report.SHA256, &buf); err != nil {
		t.Fatal(err)
	}
	report := buf.String()
	if strings.Contains(report, "ESCAPED") || strings.Count(report, "held: ") != 8 {
		t.Errorf("the hook got out of its sandbox:\n%s", report)
	}
	for _, want := range []string{"uid=65534\n", "Seccomp:\t2\n", "NoNewPrivs:\t1\n", "CapEff:\t0000000000000000\n",
		"< " + g.Members[0].ID + "\n", "> " + g.Members[1].ID + "\n"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if _, err := os.Lstat(filepath.Join(hostDir, "pwned")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the hook wrote into a host directory: %v", err)
	}
	// A connect that went through would be queued by now.
	if err := l.(*net.TCPListener).SetDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Accept(); err == nil {
		c.Close()
		t.Error("the hook reached a port on the host's loopback")
	}
	cl.assertNoLeftovers(t, plain, differ)
	plain.proc.Term()
	differ.proc.Term()
}

// TestDiffoscopeRealReport: Debian's diffoscope itself (the hook of
// docs/host-tools.md) finds what it needs in its sandbox and writes the
// report of a group whose members differ.
func TestDiffoscopeRealReport(t *testing.T) {
	testsupport.NeedCommand(t, "diffoscope")
	cl := newCluster(t, `reproduce_wait = "1h"`)
	plain := cl.addWorker(t, "plain", "", "", "busybox")
	differ := cl.addWorkerWithHooks(t, "differ", "", `[hooks.diffoscope]
stage = "post"
command = ["/bin/sh", "-c", 'diffoscope --text "$KILN_REPORT" "$KILN_ARTIFACTS_A" "$KILN_ARTIFACTS_B"']
timeout = "5m"
`, "busybox")
	stamp := cl.addJob(t, "name = \"stamp\"\nimage = \"busybox\"\nscript = \"echo same > /out/same.txt; hostname > /out/host.txt\"\n")
	cl.waitHeartbeats(t, plain.name, differ.name)
	g := cl.waitReport(t, cl.executeTwins(t, stamp), 5*time.Minute)
	rep := g.Report
	if rep.State != api.StateSucceeded || rep.Report == nil {
		t.Fatalf("report %+v\nconsole:\n%s\nworker log:\n%s", rep, cl.console(t, rep.Run), tail(differ.proc.Log()))
	}
	var buf strings.Builder
	if err := cl.client().DownloadBlob(context.Background(), rep.Report.SHA256, &buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"host.txt", "-" + g.Members[0].ID, "+" + g.Members[1].ID} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("diffoscope's report lacks %q:\n%s", want, buf.String())
		}
	}
	cl.assertNoLeftovers(t, plain, differ)
	plain.proc.Term()
	differ.proc.Term()
}

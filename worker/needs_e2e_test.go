//go:build linux

package worker_test

import (
	"bytes"
	"context"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

const (
	needsLib = `name = "lib"
image = "busybox"
env = { V = "1" }
script = "set -e; mkdir -p /out/sub; echo lib $V > /out/libfoo.a; echo notes > /out/sub/notes.txt"
`
	// tool takes lib's *.a only; /in is read-only.
	needsTool = `name = "tool"
image = "busybox"
script = """
set -e
test ! -e /in/needs/lib/sub/notes.txt
if touch /in/needs/lib/x 2>/dev/null; then echo /in is writable; exit 9; fi
cat /in/needs/lib/libfoo.a > /out/tool.bin
echo tool >> /out/tool.bin
"""
[[needs]]
job = "lib"
artifacts = ["*.a"]
`
	needsPkg = `name = "pkg"
image = "busybox"
script = "set -e; cat /in/needs/lib/sub/notes.txt; cat /in/needs/lib/libfoo.a /in/needs/tool/tool.bin > /out/pkg.txt"
[[needs]]
job = "lib"
[[needs]]
job = "tool"
`
)

// TestNeedsGraphEndToEnd: a real server and worker run a three-job graph
// (a library, a tool that needs it, a package that needs both). The
// package's run waits in dep-wait (CLI, run info, web page) and survives
// a SIGKILL of the server; the needed runs' artifacts arrive read-only
// under /in/needs/<job>/, filtered by the need's globs; execute --reuse
// then answers with the package's run, saying so; a modified library runs
// all three again; a failing library skips the rest, naming its run; a
// cycle is refused at add and at modify.
func TestNeedsGraphEndToEnd(t *testing.T) {
	cl := newCluster(t)
	ctx := context.Background()
	c := cl.client()
	cl.addJob(t, needsLib)
	cl.addJob(t, needsTool)
	cl.addJob(t, needsPkg)

	// A cycle is refused at add (the job needs itself) and at modify.
	self := filepath.Join(t.TempDir(), "self.toml")
	if err := os.WriteFile(self, []byte("name = \"self\"\nimage = \"busybox\"\nscript = \"true\"\n[[needs]]\njob = \"self\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := cl.srv.Run("job", "add", self); code == 0 || !strings.Contains(stderr, "cycle self -> self") {
		t.Fatalf("job add of a self-cycle: exit %d, %s", code, stderr)
	}
	cyc, err := api.ParseJobFile([]byte(needsLib + "[[needs]]\njob = \"pkg\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ModifyJob(ctx, "lib", cyc); err == nil || !strings.Contains(err.Error(), "needs cycle: lib -> pkg -> lib") {
		t.Fatalf("modify making a cycle: %v", err)
	}

	// No worker yet: the graph waits, and says what for.
	stdout, stderr, code := cl.srv.Run("job", "execute", "pkg")
	if code != 0 {
		t.Fatalf("execute: exit %d: %s", code, stderr)
	}
	pkgID := strings.TrimSpace(stdout)
	pkg, err := c.GetRun(ctx, pkgID)
	if err != nil {
		t.Fatal(err)
	}
	libID, toolID := needOf(pkg, "lib"), needOf(pkg, "tool")
	wantWait := "dep-wait: lib run " + libID + ", tool run " + toolID
	if pkg.State != api.StateDepWait || strings.TrimSpace(stderr) != wantWait {
		t.Fatalf("execute said %q, run %+v; want %q", stderr, pkg, wantWait)
	}
	cl.srv.Restart() // SIGKILL, then a new server on the same database
	info, stderr, code := cl.srv.Run("run", "info", pkgID)
	if code != 0 || !strings.Contains(info, "dep-wait") || !strings.Contains(info, wantWait) || !strings.Contains(info, "lib run "+libID+" (queued)") {
		t.Fatalf("run info after restart (exit %d, %s):\n%s", code, stderr, info)
	}
	if page := webPage(t, cl, "/runs/"+pkgID); !strings.Contains(html.UnescapeString(page), wantWait) {
		t.Fatalf("the run page does not say %q", wantWait)
	}

	w := cl.addWorker(t, "graph", "", "", "busybox")
	pkg = cl.wait(t, pkgID, 3*time.Minute, finished)
	if pkg.State != api.StateSucceeded {
		t.Fatalf("pkg %+v\nconsole:\n%s\nlib console:\n%s\ntool console:\n%s", pkg, cl.console(t, pkgID), cl.console(t, libID), cl.console(t, toolID))
	}
	if got := artifactText(t, cl, pkg, "pkg.txt"); got != "lib 1\nlib 1\ntool\n" {
		t.Fatalf("pkg.txt %q", got)
	}
	if con := cl.console(t, pkgID); !strings.Contains(con, "notes") {
		t.Fatalf("pkg did not see lib's notes (no glob: all artifacts):\n%s", con)
	}

	// --reuse answers with pkg's run and runs nothing.
	stdout, stderr, code = cl.srv.Run("job", "execute", "--reuse", "pkg")
	if code != 0 || strings.TrimSpace(stdout) != pkgID || !strings.Contains(stderr, "reused run "+pkgID) {
		t.Fatalf("execute --reuse: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, job := range []string{"lib", "tool", "pkg"} {
		if runs, err := c.ListRuns(ctx, job, 0); err != nil || len(runs) != 1 {
			t.Fatalf("%s has runs %+v (%v), want 1", job, runs, err)
		}
	}

	// A modified library runs all three again.
	lib2, err := api.ParseJobFile([]byte(strings.Replace(needsLib, `V = "1"`, `V = "2"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ModifyJob(ctx, "lib", lib2); err != nil {
		t.Fatal(err)
	}
	p2, err := c.ExecuteJobWith(ctx, "pkg", api.ExecuteRequest{Reuse: true})
	if err != nil || p2.Reused || needOf(p2, "lib") == libID || needOf(p2, "tool") == toolID {
		t.Fatalf("after modify: %+v %v", p2, err)
	}
	p2 = cl.wait(t, p2.ID, 3*time.Minute, finished)
	if got := artifactText(t, cl, p2, "pkg.txt"); p2.State != api.StateSucceeded || got != "lib 2\nlib 2\ntool\n" {
		t.Fatalf("pkg after modify: %+v, pkg.txt %q", p2, got)
	}

	// A failing library skips the rest, naming the failed run.
	bad, err := api.ParseJobFile([]byte(strings.Replace(needsLib, "set -e;", "exit 3;", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ModifyJob(ctx, "lib", bad); err != nil {
		t.Fatal(err)
	}
	p3, err := c.ExecuteJobWith(ctx, "pkg", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	p3 = cl.wait(t, p3.ID, 3*time.Minute, finished)
	failed := needOf(p3, "lib")
	if l, err := c.GetRun(ctx, failed); err != nil || l.State != api.StateFailed {
		t.Fatalf("lib %+v %v", l, err)
	}
	for _, id := range []string{needOf(p3, "tool"), p3.ID} {
		r, err := c.GetRun(ctx, id)
		if err != nil || r.State != api.StateSkipped || !strings.Contains(r.Error, "lib run "+failed+" failed") || r.LogSize != 0 {
			t.Fatalf("run %s after lib failed: %+v %v", id, r, err)
		}
	}
	cl.assertNoLeftovers(t, w)
}

func needOf(r *api.Run, job string) string {
	for _, n := range r.Needs {
		if n.Job == job {
			return n.Run
		}
	}
	return ""
}

func artifactText(t *testing.T, cl *cluster, r *api.Run, path string) string {
	t.Helper()
	for _, a := range r.Artifacts {
		if a.Path == path {
			var b bytes.Buffer
			if err := cl.client().DownloadBlob(context.Background(), a.SHA256, &b); err != nil {
				t.Fatal(err)
			}
			return b.String()
		}
	}
	t.Fatalf("run %s has no artifact %s: %+v", r.ID, path, r.Artifacts)
	return ""
}

// webPage fetches a page of the web view as the admin.
func webPage(t *testing.T, cl *cluster, path string) string {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	resp, err := hc.PostForm(cl.srv.URL+"/login", url.Values{"token": {cl.srv.AdminToken()}, "next": {"/"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = hc.Get(cl.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, b)
	}
	return string(b)
}

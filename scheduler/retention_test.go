package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// The retention tests (docs/retention.md) run real server processes, on
// SQLite and with KILN_TEST_STORE=postgres, with a fake worker driving
// runs through the API. The grace period is 1s, and a test that needs
// files older than it waits that long once: the grace period is a lower
// bound, so waiting past it is not a timed assertion.

const testGrace = 1200 * time.Millisecond

type retention struct {
	srv   *testsupport.TestServer
	admin *api.Client
	w     *api.Client
	facts api.Facts
	mu    sync.Mutex // one run at a time through the fake worker
}

// retentionServer starts a server with extra lines in its server.toml
// (tables) and retention keys in its [retention].
func retentionServer(t *testing.T, extra []string, retentionKeys ...string) *retention {
	t.Helper()
	conf := append(append(extra, "[retention]", `grace = "1s"`, `interval = "1000h"`), retentionKeys...)
	srv := testsupport.StartServer(t, conf...)
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	return &retention{srv: srv, admin: srv.Client(), w: enroll(t, srv, "h1", nil, facts), facts: facts}
}

// run executes job as c and has the fake worker finish it with a
// console and files as artifacts.
func (f *retention) run(t *testing.T, c *api.Client, job string, files map[string]string) *api.Run {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	ctx := context.Background()
	run, err := c.ExecuteJobWith(ctx, job, api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, f.w, f.facts, 10*time.Second)
	if a.RunID != run.ID {
		t.Fatalf("leased run %s, want %s", a.RunID, run.ID)
	}
	if _, err := f.w.AppendLog(ctx, a.RunID, a.Fence, 0, []byte("console of "+run.ID+"\n")); err != nil {
		t.Fatal(err)
	}
	return finish(t, f.w, a, files)
}

// gc runs `kiln server gc` (with args) and returns its output.
func (f *retention) gc(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := f.srv.Run(append([]string{"server", "gc"}, args...)...)
	if code != 0 {
		t.Fatalf("kiln server gc %v: exit %d: %s%s", args, code, out, errOut)
	}
	return out
}

// runIDs reads the ids of every run in the database.
func runIDs(t *testing.T, srv *testsupport.TestServer) []string {
	t.Helper()
	rows, err := srv.DB().Query(`SELECT CAST(id AS TEXT) FROM runs ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := []string{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// blobFiles lists the blob files on disk (not partial uploads), and
// what is left in the blob store's trash.
func blobFiles(t *testing.T, srv *testsupport.TestServer) (files []string, trash int) {
	t.Helper()
	dir := filepath.Join(srv.DataDir, "blobs")
	matches, err := filepath.Glob(filepath.Join(dir, "??", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range matches {
		files = append(files, filepath.Base(m))
	}
	sort.Strings(files)
	ents, _ := os.ReadDir(filepath.Join(dir, "trash"))
	return files, len(ents)
}

// noDangling checks that every row naming a blob or a run has it: each
// artifact's blob file is on disk, and no console, artifact or
// attestation row outlived its run.
func noDangling(t *testing.T, srv *testsupport.TestServer) {
	t.Helper()
	db := srv.DB()
	rows, err := db.Query(`SELECT sha256 FROM artifacts`)
	if err != nil {
		t.Fatal(err)
	}
	var shas []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		shas = append(shas, s)
	}
	rows.Close()
	for _, s := range shas {
		if _, err := os.Stat(filepath.Join(srv.DataDir, "blobs", s[:2], s)); err != nil {
			t.Errorf("artifact blob %s: %v", s, err)
		}
	}
	for _, table := range []string{"run_logs", "artifacts", "run_attestations"} {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM ` + table + ` WHERE run NOT IN (SELECT id FROM runs)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d %s rows of removed runs", n, table)
		}
	}
}

func shas(contents ...string) []string {
	out := []string{}
	for _, c := range contents {
		out = append(out, sha([]byte(c)))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// TestRetentionSweep: after `kiln server gc` exactly the runs the rules
// keep remain (the last keep_last of each job, the job's own rule over
// the server's, kiln run keep), their artifacts download, their consoles
// read, and every other blob file is gone from disk: the removed runs'
// artifacts, an upload nothing named, and a file no row references (a
// crash's leftover); shared artifacts and job inputs stay. --dry-run
// says the same and removes nothing.
func TestRetentionSweep(t *testing.T) {
	// keep_last = 2 for the server; job b keeps only its last run.
	f := retentionServer(t, nil, "keep_last = 2")
	ctx := context.Background()

	input := []byte("the input of job a")
	if err := f.admin.UploadBlob(ctx, sha(input), bytes.NewReader(input), int64(len(input))); err != nil {
		t.Fatal(err)
	}
	addJob(t, f.admin, "name = \"a\"\nimage = \"bookworm\"\nscript = \"true\"\n[[inputs]]\npath = \"in\"\nsha256 = \""+sha(input)+"\"\n")
	addJob(t, f.admin, "name = \"b\"\nimage = \"bookworm\"\nscript = \"true\"\n[retention]\nkeep_last = 1\n")
	var a, b []*api.Run
	for i := range 4 {
		a = append(a, f.run(t, f.admin, "a", map[string]string{"own": "a-" + string(rune('1'+i)), "shared": "shared"}))
	}
	for i := range 3 {
		b = append(b, f.run(t, f.admin, "b", map[string]string{"own": "b-" + string(rune('1'+i))}))
	}
	// a1 is kept forever; b2 is kept and handed back.
	if r, err := f.admin.KeepRun(ctx, a[0].ID, true); err != nil || !r.Kept {
		t.Fatalf("keep: %+v %v", r, err)
	}
	if out, _, code := f.srv.Run("run", "keep", b[1].ID); code != 0 || !strings.Contains(out, "kept") {
		t.Fatalf("kiln run keep: %d %q", code, out)
	}
	if out, _, code := f.srv.Run("run", "unkeep", b[1].ID); code != 0 || !strings.Contains(out, "retention rules") {
		t.Fatalf("kiln run unkeep: %d %q", code, out)
	}
	orphanUpload := []byte("uploaded, never named")
	if err := f.admin.UploadBlob(ctx, sha(orphanUpload), bytes.NewReader(orphanUpload), int64(len(orphanUpload))); err != nil {
		t.Fatal(err)
	}
	// A file no row names, as a crash between a run's rows and its
	// files would leave.
	leftover := sha([]byte("leftover"))
	if err := os.MkdirAll(filepath.Join(f.srv.DataDir, "blobs", leftover[:2]), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.srv.DataDir, "blobs", leftover[:2], leftover), []byte("leftover"), 0o640); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testGrace)
	before := runIDs(t, f.srv)

	out := f.gc(t, "--dry-run")
	if !strings.Contains(out, "would remove:") || !strings.Contains(out, " 3 runs, 3 consoles") || !strings.Contains(out, " 5 blobs") {
		t.Fatalf("dry run says:\n%s", out)
	}
	if got := runIDs(t, f.srv); !slices.Equal(got, before) {
		t.Fatalf("dry run removed runs: %v, had %v", got, before)
	}

	out = f.gc(t)
	if !strings.Contains(out, "removed:") || !strings.Contains(out, " 3 runs, 3 consoles") || !strings.Contains(out, " 5 blobs") {
		t.Fatalf("gc says:\n%s", out)
	}
	want := []string{a[0].ID, a[2].ID, a[3].ID, b[2].ID}
	if got := runIDs(t, f.srv); !slices.Equal(got, want) {
		t.Fatalf("runs left %v, want %v", got, want)
	}
	files, trash := blobFiles(t, f.srv)
	if wantFiles := shas("a-1", "a-3", "a-4", "shared", "b-3", string(input)); !slices.Equal(files, wantFiles) || trash != 0 {
		t.Fatalf("blob files %v (trash %d), want %v", files, trash, wantFiles)
	}
	noDangling(t, f.srv)
	for _, id := range want {
		arts, err := f.admin.ListArtifacts(ctx, id)
		if err != nil || len(arts) == 0 {
			t.Fatalf("run %s artifacts: %v %v", id, arts, err)
		}
		for _, art := range arts {
			var buf bytes.Buffer
			if err := f.admin.DownloadBlob(ctx, art.SHA256, &buf); err != nil || sha(buf.Bytes()) != art.SHA256 {
				t.Fatalf("run %s artifact %s: %v", id, art.Path, err)
			}
		}
		chunk, err := f.admin.ReadLog(ctx, id, 0, 0, 0)
		if err != nil || !strings.Contains(string(chunk.Data), "console of "+id) {
			t.Fatalf("run %s console: %+v %v", id, chunk, err)
		}
	}
	if _, err := f.admin.GetRun(ctx, a[1].ID); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("a removed run: %v", err)
	}
	for name, want := range map[string]float64{
		`kiln_gc_removed_total{kind="run"}`:  3,
		`kiln_gc_removed_total{kind="blob"}`: 5,
		`kiln_stored_objects{kind="blob"}`:   6,
		`kiln_stored_objects{kind="run"}`:    4,
	} {
		if got := metric(t, f.srv, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// Nothing more to do.
	if out := f.gc(t); !strings.Contains(out, " 0 runs, 0 consoles (0 bytes), 0 blobs") {
		t.Fatalf("second gc says:\n%s", out)
	}
}

// TestRetentionKilledMidSweep: a server SIGKILLed in the middle of a
// sweep, once while removing runs and once while removing blob files,
// leaves no row naming a missing file or run; restarted, its next sweep
// ends in exactly the state of an uninterrupted one.
func TestRetentionKilledMidSweep(t *testing.T) {
	// One run or blob at a time, 150ms apart: the sweep is slow enough to
	// be caught in the middle.
	t.Setenv("KILN_GC_TEST_PAUSE", "150ms")
	f := retentionServer(t, nil)
	ctx := context.Background()
	addJob(t, f.admin, "name = \"a\"\nimage = \"bookworm\"\nscript = \"true\"\n[retention]\nkeep_last = 1\n")
	const n = 12
	var runs []*api.Run
	for i := range n {
		runs = append(runs, f.run(t, f.admin, "a", map[string]string{"own": "own-" + runs2s(i), "shared": "shared"}))
	}
	time.Sleep(testGrace)
	files0, _ := blobFiles(t, f.srv)

	sweepUntil := func(cond func() bool) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); _, _ = f.srv.Client().GC(ctx, false) }()
		for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("sweep did not get there; runs %v", runIDs(t, f.srv))
			}
		}
		f.srv.Kill()
		<-done
		noDangling(t, f.srv)
		f.srv.Restart()
	}
	// Killed while removing runs.
	sweepUntil(func() bool { k := len(runIDs(t, f.srv)); return k < n-2 && k > 1 })
	// Killed while removing blob files (the runs are gone by then).
	sweepUntil(func() bool {
		files, _ := blobFiles(t, f.srv)
		return len(runIDs(t, f.srv)) == 1 && len(files) < len(files0)-2 && len(files) > 2
	})
	t.Setenv("KILN_GC_TEST_PAUSE", "")
	f.srv.Restart()
	f.gc(t)
	if got := runIDs(t, f.srv); !slices.Equal(got, []string{runs[n-1].ID}) {
		t.Fatalf("runs left %v, want %s", got, runs[n-1].ID)
	}
	files, trash := blobFiles(t, f.srv)
	if want := shas("own-"+runs2s(n-1), "shared"); !slices.Equal(files, want) || trash != 0 {
		t.Fatalf("blob files %v (trash %d), want %v", files, trash, want)
	}
	noDangling(t, f.srv)
}

func runs2s(i int) string { return string(rune('a' + i)) }

// TestRetentionRacesUploads: sweeps running back to back while runs
// upload artifacts lose nothing: blobs stored long ago that nothing
// referenced (older than the grace period), which the worker is told it
// need not send again, and new ones, are all on disk and download when
// the runs that name them have reported.
func TestRetentionRacesUploads(t *testing.T) {
	f := retentionServer(t, nil)
	ctx := context.Background()
	addJob(t, f.admin, "name = \"a\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	const n = 30
	for i := range n {
		b := []byte("stored before " + runs2s(i))
		if err := f.admin.UploadBlob(ctx, sha(b), bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(testGrace)
	stop := make(chan struct{})
	var sweeps int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.admin.GC(ctx, false); err != nil {
				t.Error(err)
				return
			}
			sweeps++
		}
	}()
	for i := range n {
		f.run(t, f.admin, "a", map[string]string{"old": "stored before " + runs2s(i), "new": "new " + runs2s(i)})
	}
	close(stop)
	wg.Wait()
	f.gc(t)
	noDangling(t, f.srv)
	ids := runIDs(t, f.srv)
	if len(ids) != n {
		t.Fatalf("%d runs, want %d", len(ids), n)
	}
	for _, id := range ids {
		arts, err := f.admin.ListArtifacts(ctx, id)
		if err != nil || len(arts) != 2 {
			t.Fatalf("run %s artifacts: %v %v", id, arts, err)
		}
		for _, a := range arts {
			var buf bytes.Buffer
			if err := f.admin.DownloadBlob(ctx, a.SHA256, &buf); err != nil || sha(buf.Bytes()) != a.SHA256 {
				t.Fatalf("artifact %s of run %s: %v", a.Path, id, err)
			}
		}
	}
	t.Logf("%d sweeps ran beside %d runs", sweeps, n)
}

// TestStorageQuota: an owner over its storage_quota (server.toml
// [owners.NAME]) is refused an execute (429) and an upload (413), each
// with a message naming the limit; another owner goes on.
func TestStorageQuota(t *testing.T) {
	f := retentionServer(t, []string{"[owners.ci]", `storage_quota = "1KiB"`})
	ctx := context.Background()
	tok := func(name string) *api.Client {
		ct, err := f.admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return f.srv.ClientWith(ct.Token)
	}
	ci, other := tok("ci"), tok("other")
	addJob(t, ci, "name = \"ci-job\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	addJob(t, other, "name = \"other-job\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	f.run(t, ci, "ci-job", map[string]string{"small": "x"})
	// Under the quota: a second run, with 2000 bytes of artifacts.
	f.run(t, ci, "ci-job", map[string]string{"big": strings.Repeat("y", 2000)})
	refused := func(err error, status int, what string) {
		t.Helper()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != status || ae.Body.Code != api.CodeQuota ||
			!strings.Contains(ae.Body.Error, "storage_quota") || !strings.Contains(ae.Body.Error, "1024") || !strings.Contains(ae.Body.Error, "[owners.ci]") {
			t.Fatalf("%s over the quota: %v", what, err)
		}
	}
	_, err := ci.ExecuteJobWith(ctx, "ci-job", api.ExecuteRequest{})
	refused(err, http.StatusTooManyRequests, "execute")
	// The admin executing ci's job is refused too: the quota is the owner's.
	_, err = f.admin.ExecuteJobWith(ctx, "ci-job", api.ExecuteRequest{})
	refused(err, http.StatusTooManyRequests, "execute by the admin")
	up := []byte("an input")
	refused(ci.UploadBlob(ctx, sha(up), bytes.NewReader(up), int64(len(up))), http.StatusRequestEntityTooLarge, "upload")
	// Another owner has no quota.
	otherRun := f.run(t, other, "other-job", map[string]string{"big": strings.Repeat("z", 5000)})
	if err := other.UploadBlob(ctx, sha(up), bytes.NewReader(up), int64(len(up))); err != nil {
		t.Fatal(err)
	}
	// A client token may neither collect nor keep another owner's run.
	if _, err := ci.GC(ctx, true); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("gc by a client token: %v", err)
	}
	if _, err := ci.KeepRun(ctx, otherRun.ID, true); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("keep of another owner's run: %v", err)
	}
	if r, err := other.KeepRun(ctx, otherRun.ID, true); err != nil || !r.Kept {
		t.Fatalf("keep of its own run: %+v %v", r, err)
	}
	// A schedule fires through the same rule: ci's does not queue while
	// ci is at its quota, other's (no quota) does.
	queuedOf := func(job string) int {
		var n int
		if err := f.srv.DB().QueryRow(`SELECT count(*) FROM runs WHERE job = '` + job + `' AND state = 'queued'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []struct {
		cl  *api.Client
		job string
	}{{ci, "ci-job"}, {other, "other-job"}} {
		if _, err := c.cl.ScheduleJob(ctx, c.job, "@every 1s"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for queuedOf("other-job") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("other's schedule never fired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // one more tick for ci's
	if n := queuedOf("ci-job"); n != 0 {
		t.Fatalf("ci's schedule queued %d runs over its storage quota", n)
	}
	if !strings.Contains(f.srv.Log(), "storage_quota") {
		t.Fatalf("the server's log does not say why ci's schedule did not fire:\n%s", f.srv.Log())
	}
	for _, c := range []struct {
		cl  *api.Client
		job string
	}{{ci, "ci-job"}, {other, "other-job"}} {
		if _, err := c.cl.UnscheduleJob(ctx, c.job); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRetentionOneSweeperAcrossReplicas: two replicas on one PostgreSQL
// database and blob directory never sweep at once: while one sweeps, the
// other's `kiln server gc` says another collection is running and
// removes nothing; once the first is done, the result is the same as one
// sweep's.
func TestRetentionOneSweeperAcrossReplicas(t *testing.T) {
	t.Setenv("KILN_GC_TEST_PAUSE", "100ms")
	_, srvs := replicas(t, 2, "[retention]", `grace = "1s"`, `interval = "1000h"`, "keep_last = 1")
	a, b := srvs[0], srvs[1]
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	f := &retention{srv: a, admin: a.Client(), w: enroll(t, a, "h1", nil, facts), facts: facts}
	addJob(t, f.admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	const n = 8
	var last *api.Run
	for i := range n {
		last = f.run(t, f.admin, "j", map[string]string{"own": "own-" + runs2s(i)})
	}
	time.Sleep(testGrace)
	ctx := context.Background()
	first := make(chan *api.GCReport, 1)
	go func() {
		rep, err := a.Client().GC(ctx, false)
		if err != nil {
			t.Error(err)
		}
		first <- rep
	}()
	for deadline := time.Now().Add(30 * time.Second); len(runIDs(t, a)) == n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first sweep removed nothing")
		}
	}
	rep, err := b.ClientWith(a.AdminToken()).GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Busy || rep.Runs != 0 || rep.Blobs != 0 {
		t.Fatalf("second replica's sweep during the first: %+v", rep)
	}
	if rep := <-first; rep == nil || rep.Busy || rep.Runs != n-1 || rep.Blobs != n-1 {
		t.Fatalf("first sweep: %+v", rep)
	}
	if got := runIDs(t, a); !slices.Equal(got, []string{last.ID}) {
		t.Fatalf("runs left %v, want %s", got, last.ID)
	}
	if files, trash := blobFiles(t, a); !slices.Equal(files, shas("own-"+runs2s(n-1))) || trash != 0 {
		t.Fatalf("blob files %v (trash %d)", files, trash)
	}
	out, _, code := b.Run("server", "gc")
	if code != 0 || !strings.Contains(out, " 0 runs") {
		t.Fatalf("gc on the second replica afterwards: %d %q", code, out)
	}
}

// TestRetentionKeepsImageVersions: a server-held image version's blob
// is live however old it is, and goes at the first sweep after the
// version is removed.
func TestRetentionKeepsImageVersions(t *testing.T) {
	f := retentionServer(t, nil, "keep_last = 1")
	ctx := context.Background()
	v := publish(t, f.admin, imageBlob(t, f.srv, "bookworm", "the tree of bookworm"))
	time.Sleep(testGrace)
	f.gc(t)
	if files, _ := blobFiles(t, f.srv); !slices.Contains(files, v.Blob) {
		t.Fatalf("the sweep removed image bookworm@%d's blob: files left %v", v.Version, files)
	}
	var buf bytes.Buffer
	if err := f.admin.DownloadBlob(ctx, v.Blob, &buf); err != nil {
		t.Fatalf("image blob after a sweep: %v", err)
	}
	if err := f.admin.RemoveImageVersion(ctx, "bookworm", v.Version); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testGrace)
	f.gc(t)
	if files, _ := blobFiles(t, f.srv); slices.Contains(files, v.Blob) {
		t.Fatalf("a removed version's blob outlived the sweep: files %v", files)
	}
}

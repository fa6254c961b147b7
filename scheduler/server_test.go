package scheduler_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"

	_ "modernc.org/sqlite"
)

func hostFacts(images ...string) api.Facts {
	f := api.Facts{OS: "linux", Arch: "amd64", EmulatedArchs: []string{"arm64"}, Slots: 2, FreeSlots: 2}
	for _, im := range images {
		f.Images = append(f.Images, api.ImageFact{Name: im, Arch: "amd64", Versions: []string{"20260101"}})
	}
	return f
}

// enroll makes an enrollment token with the admin client and enrolls a
// worker with it.
func enroll(t *testing.T, srv *testsupport.TestServer, name string, labels map[string]string, facts api.Facts) *api.Client {
	t.Helper()
	ctx := context.Background()
	tok, err := srv.Client().CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: name, Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Name != name {
		t.Fatalf("enrolled as %q, want %q", resp.Name, name)
	}
	return srv.ClientWith(resp.Token)
}

func addJob(t *testing.T, c *api.Client, toml string) {
	t.Helper()
	j, err := api.ParseJobFile([]byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddJob(context.Background(), j); err != nil {
		t.Fatal(err)
	}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func mustLease(t *testing.T, w *api.Client, facts api.Facts, wait time.Duration) *api.Assignment {
	t.Helper()
	a, err := w.Lease(context.Background(), api.LeaseRequest{Facts: facts, Wait: api.Duration(wait)})
	if err != nil {
		t.Fatal(err)
	}
	if a == nil {
		t.Fatal("lease: no run within", wait)
	}
	return a
}

// TestRunLifecycle drives one run through the whole API the way a worker
// and a user do: input upload, job add, execute, long-poll lease, console
// with offsets followed live by `kiln run observe`, artifact upload,
// result, `kiln artifact get`.
func TestRunLifecycle(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()

	dir := t.TempDir()
	input := filepath.Join(dir, "hello.dsc")
	os.WriteFile(input, []byte("source package\n"), 0o644)
	jobFile := filepath.Join(dir, "job.toml")
	os.WriteFile(jobFile, []byte("name = \"hello\"\nimage = \"bookworm\"\nscript = \"exit 3\"\n[[inputs]]\npath = \"src/hello.dsc\"\n"), 0o644)
	out, errOut, code := srv.Run("job", "add", jobFile, "--input", input)
	if code != 0 || strings.TrimSpace(out) != "hello" {
		t.Fatalf("job add: code %d out %q err %q", code, out, errOut)
	}
	ji, err := admin.GetJob(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(ji.Job.Inputs) != 1 || ji.Job.Inputs[0].SHA256 != sha([]byte("source package\n")) {
		t.Fatalf("inputs not filled by --input: %+v", ji.Job.Inputs)
	}

	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	leased := make(chan *api.Assignment, 1)
	go func() {
		a, _ := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(20 * time.Second)})
		leased <- a
	}()
	time.Sleep(100 * time.Millisecond) // let the worker wait first: the run must reach a waiting worker
	out, _, code = srv.Run("job", "execute", "hello")
	runID := strings.TrimSpace(out)
	if code != 0 || runID == "" {
		t.Fatalf("job execute: %d %q", code, out)
	}
	a := <-leased
	if a == nil || a.RunID != runID || a.Attempt != 1 || a.Fence == "" || a.Job.Name != "hello" {
		t.Fatalf("lease answer: %+v", a)
	}

	var buf bytes.Buffer
	if err := w.DownloadBlob(ctx, a.Job.Inputs[0].SHA256, &buf); err != nil || buf.String() != "source package\n" {
		t.Fatalf("input download: %v %q", err, buf.String())
	}

	type obs struct {
		out  string
		code int
	}
	observed := make(chan obs, 1)
	go func() {
		o, _, c := srv.Run("run", "observe", runID)
		observed <- obs{o, c}
	}()
	n, err := w.AppendLog(ctx, runID, a.Fence, 0, []byte("line one\n"))
	if err != nil || n != 9 {
		t.Fatalf("append: %d %v", n, err)
	}
	if n, err = w.AppendLog(ctx, runID, a.Fence, 0, []byte("line one\n")); err != nil || n != 9 {
		t.Fatalf("repeated append must be a no-op: %d %v", n, err)
	}
	if _, err = w.AppendLog(ctx, runID, a.Fence, 20, []byte("gap")); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("gap append: %v", err)
	} else if off, ok := api.LogResumeOffset(err); !ok || off != 9 {
		t.Fatalf("gap answer carries length %d %v, want 9", off, ok)
	}
	if n, err = w.AppendLog(ctx, runID, a.Fence, 5, []byte("one\nline two\n")); err != nil || n != 18 {
		t.Fatalf("overlapping append: %d %v", n, err)
	}

	art := []byte("artifact content")
	if err := w.UploadArtifact(ctx, runID, a.Fence, sha(art), bytes.NewReader(art), int64(len(art))); err != nil {
		t.Fatal(err)
	}
	run, err := w.ReportResult(ctx, runID, api.ResultRequest{Fence: a.Fence, ExitCode: 3,
		Artifacts: []api.Artifact{{Path: "deb/hello.deb", Size: int64(len(art)), Mode: 0o644, SHA256: sha(art)}}})
	if err != nil || run.State != api.StateFailed || *run.ExitCode != 3 {
		t.Fatalf("result: %+v %v", run, err)
	}
	o := <-observed
	if o.out != "line one\nline two\n" || o.code != 3 {
		t.Fatalf("observe printed %q and exited %d; want both lines and 3", o.out, o.code)
	}
	// A repeated report of the same fence is answered, not re-applied.
	if run, err = w.ReportResult(ctx, runID, api.ResultRequest{Fence: a.Fence, ExitCode: 0}); err != nil || run.State != api.StateFailed {
		t.Fatalf("repeated result: %+v %v", run, err)
	}
	getDir := filepath.Join(dir, "got")
	if _, e, c := srv.Run("artifact", "get", runID, "-o", getDir); c != 0 {
		t.Fatalf("artifact get: %s", e)
	}
	if b, err := os.ReadFile(filepath.Join(getDir, "deb", "hello.deb")); err != nil || !bytes.Equal(b, art) {
		t.Fatalf("downloaded artifact: %q %v", b, err)
	}
	if out, _, _ := srv.Run("run", "observe", "--latest", "hello"); out != "line one\nline two\n" {
		t.Fatalf("observe --latest of a finished run: %q", out)
	}
}

// TestLeaseExpiryRequeue: a worker that stops heartbeating loses its run
// to a new attempt; its fence is refused afterwards, and a run that loses
// its last allowed attempt ends as lost.
func TestLeaseExpiryRequeue(t *testing.T) {
	srv := testsupport.StartServer(t, `lease_duration = "1s"`, `lease_check = "100ms"`, `max_attempts = 2`)
	ctx := context.Background()
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w1 := enroll(t, srv, "h1", nil, facts)
	w2 := enroll(t, srv, "h2", nil, facts)
	run, err := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a1 := mustLease(t, w1, facts, time.Second)
	if _, err := w1.AppendLog(ctx, run.ID, a1.Fence, 0, []byte("attempt one\n")); err != nil {
		t.Fatal(err)
	}
	// h1 goes silent; h2 gets the run as attempt 2 once the lease expires.
	a2 := mustLease(t, w2, facts, 10*time.Second)
	if a2.RunID != run.ID || a2.Attempt != 2 || a2.Fence == a1.Fence {
		t.Fatalf("requeued lease: %+v (first %+v)", a2, a1)
	}
	for name, call := range map[string]func() error{
		"log":    func() error { _, err := w1.AppendLog(ctx, run.ID, a1.Fence, 12, []byte("x")); return err },
		"result": func() error { _, err := w1.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a1.Fence}); return err },
		"upload": func() error {
			return w1.UploadArtifact(ctx, run.ID, a1.Fence, sha([]byte("x")), bytes.NewReader([]byte("x")), 1)
		},
	} {
		t.Run("stale "+name, func(t *testing.T) {
			if err := call(); !errors.Is(err, api.ErrStaleFence) {
				t.Fatalf("stale fence accepted or wrong error: %v", err)
			}
		})
	}
	hb, err := w1.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts, Leases: []api.LeaseRef{{RunID: run.ID, Fence: a1.Fence}}})
	if err != nil || len(hb.Revoked) != 1 || len(hb.Renewed) != 0 {
		t.Fatalf("heartbeat of a moved lease must revoke it: %+v %v", hb, err)
	}
	// Attempt 2 is also abandoned: max_attempts = 2, so the run is lost.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := srv.Client().GetRun(ctx, run.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r.State == api.StateLost {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("run not lost after its last attempt expired: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := metric(t, srv, "kiln_lease_expiries_total"); n != 2 {
		t.Fatalf("kiln_lease_expiries_total = %v, want 2", n)
	}
	if n := metric(t, srv, "kiln_dispatch_seconds_count"); n != 2 {
		t.Fatalf("kiln_dispatch_seconds_count = %v, want 2 (two leases)", n)
	}
	if n := metric(t, srv, `kiln_runs{state="lost"}`); n != 1 {
		t.Fatalf(`kiln_runs{state="lost"} = %v, want 1`, n)
	}
	lc, err := srv.Client().ReadLog(ctx, run.ID, 1, 0, 0)
	if err != nil || string(lc.Data) != "attempt one\n" {
		t.Fatalf("attempt 1's console must stay readable: %+v %v", lc, err)
	}
}

// TestHeartbeatRenewsAndCancels: heartbeats keep a lease past its
// duration, and a cancel reaches the worker through the heartbeat answer.
func TestHeartbeatRenewsAndCancels(t *testing.T) {
	srv := testsupport.StartServer(t, `lease_duration = "1s"`, `lease_check = "100ms"`)
	ctx := context.Background()
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	run, _ := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	a := mustLease(t, w, facts, time.Second)
	ref := []api.LeaseRef{{RunID: run.ID, Fence: a.Fence}}
	for range 6 {
		time.Sleep(400 * time.Millisecond)
		hb, err := w.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts, Leases: ref})
		if err != nil || len(hb.Renewed) != 1 {
			t.Fatalf("renewal failed: %+v %v", hb, err)
		}
	}
	if _, err := srv.Client().CancelRun(ctx, run.ID); err != nil {
		t.Fatal(err)
	}
	hb, err := w.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts, Leases: ref})
	if err != nil || len(hb.Cancel) != 1 || hb.Cancel[0] != run.ID {
		t.Fatalf("cancel not in heartbeat answer: %+v %v", hb, err)
	}
	r, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence, ExitCode: 143, Signal: "TERM"})
	if err != nil || r.State != api.StateCancelled {
		t.Fatalf("cancelled run ended %+v %v", r, err)
	}
}

// TestDispatchMatching: a worker never gets a run it cannot run.
func TestDispatchMatching(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	jobs := map[string]string{
		"needs-image":   "image = \"trixie\"",
		"needs-arch":    "image = \"bookworm\"\narch = \"riscv64\"",
		"needs-os":      "image = \"bookworm\"\n[constraints]\nos = \"freebsd\"",
		"needs-label":   "image = \"bookworm\"\n[constraints]\nlabels = { disk = \"ssd\" }",
		"needs-version": "image = \"bookworm@20250101\"",
		"needs-bridge":  "image = \"bookworm\"\n[resources]\nnetwork = \"bridge\"",
		"needs-host":    "image = \"bookworm\"\n[resources]\nnetwork = \"host\"",
		"needs-cache":   "image = \"bookworm\"\ncaches = [\"apt\", \"ccache\"]",
	}
	for name, body := range jobs {
		addJob(t, admin, "name = \""+name+"\"\nscript = \"true\"\n"+body+"\n")
		if _, err := admin.ExecuteJobWith(ctx, name, api.ExecuteRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "plain", nil, facts)
	if a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(300 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("worker got a run it cannot run: %+v %v", a, err)
	}
	// The enrolled label (not the worker's own claim) satisfies the label.
	ws := enroll(t, srv, "ssd", map[string]string{"disk": "ssd"}, facts)
	if a := mustLease(t, ws, facts, time.Second); a.Job.Name != "needs-label" {
		t.Fatalf("leased %s, want needs-label", a.Job.Name)
	}
	emu := facts
	emu.EmulatedArchs = []string{"riscv64"}
	emu.Images = []api.ImageFact{{Name: "bookworm", Arch: "riscv64", Versions: []string{"1"}}}
	if a := mustLease(t, w, emu, time.Second); a.Job.Name != "needs-arch" {
		t.Fatalf("leased %s, want needs-arch", a.Job.Name)
	}
	// A host offers bridge and host networking only when its facts say
	// so (host: its worker.toml allows it).
	bridge := hostFacts("bookworm")
	bridge.Networks = []string{"bridge"}
	if a := mustLease(t, w, bridge, time.Second); a.Job.Name != "needs-bridge" || a.Job.Resources.Network != api.NetworkBridge {
		t.Fatalf("leased %s (network %q), want needs-bridge", a.Job.Name, a.Job.Resources.Network)
	}
	if a, _ := w.Lease(ctx, api.LeaseRequest{Facts: bridge, Wait: api.Duration(100 * time.Millisecond)}); a != nil {
		t.Fatalf("a host refusing host networking got %s", a.Job.Name)
	}
	both := hostFacts("bookworm")
	both.Networks = []string{"bridge", "host"}
	if a := mustLease(t, w, both, time.Second); a.Job.Name != "needs-host" {
		t.Fatalf("leased %s, want needs-host", a.Job.Name)
	}
	// A host leases a job naming caches only when it has every one.
	someCaches := hostFacts("bookworm")
	someCaches.Caches = []string{"apt"}
	if a, _ := w.Lease(ctx, api.LeaseRequest{Facts: someCaches, Wait: api.Duration(100 * time.Millisecond)}); a != nil {
		t.Fatalf("a host without the ccache cache got %s", a.Job.Name)
	}
	allCaches := hostFacts("bookworm")
	allCaches.Caches = []string{"ccache", "apt", "distfiles"}
	if a := mustLease(t, w, allCaches, time.Second); a.Job.Name != "needs-cache" || len(a.Job.Caches) != 2 {
		t.Fatalf("leased %s (caches %v), want needs-cache", a.Job.Name, a.Job.Caches)
	}
	full := hostFacts("bookworm")
	full.FreeSlots = 0
	if a, _ := w.Lease(ctx, api.LeaseRequest{Facts: full, Wait: api.Duration(100 * time.Millisecond)}); a != nil {
		t.Fatalf("worker without a free slot got %+v", a)
	}
}

// TestDispatchIsolation: a run goes only to a host that offers the
// isolation its job asks for; a host that lists none offers the container
// tier only.
func TestDispatchIsolation(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	for _, iso := range []string{api.IsolationGVisor, api.IsolationVM} {
		addJob(t, admin, "name = \""+iso+"\"\nimage = \"bookworm\"\nscript = \"true\"\nisolation = \""+iso+"\"\n")
		if _, err := admin.ExecuteJobWith(ctx, iso, api.ExecuteRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name       string
		isolations []string
		want       string // job leased; "" none
	}{
		{"none listed", nil, ""},
		{"container only", []string{api.IsolationContainer}, ""},
		{"gvisor", []string{api.IsolationContainer, api.IsolationGVisor}, api.IsolationGVisor},
		{"vm", []string{api.IsolationContainer, api.IsolationVM}, api.IsolationVM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			facts := hostFacts("bookworm")
			facts.Isolations = tt.isolations
			w := enroll(t, srv, strings.ReplaceAll(tt.name, " ", "-"), nil, facts)
			if tt.want == "" {
				if a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)}); err != nil || a != nil {
					t.Fatalf("host offering %v got %+v (%v)", tt.isolations, a, err)
				}
				return
			}
			if a := mustLease(t, w, facts, time.Second); a.Job.Name != tt.want || a.Job.Isolation != tt.want {
				t.Fatalf("leased %s (isolation %q), want %s", a.Job.Name, a.Job.Isolation, tt.want)
			}
		})
	}
}

// TestDispatchNoIsolation: a host whose worker says it runs no isolation
// at all (an empty list, sent as such over the wire) gets no run, not even
// of the default tier; the same facts without the list (an older worker)
// get it.
func TestDispatchNoIsolation(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	run, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := hostFacts("bookworm")
	facts.Isolations = []string{}
	w := enroll(t, srv, "bare", nil, facts)
	if a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("a host that runs nothing got %+v (%v)", a, err)
	}
	r, err := admin.GetRun(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Waiting, "bare: offers no isolation") {
		t.Fatalf("run waiting %q, want the host's reason", r.Waiting)
	}
	facts.Isolations = nil
	if a := mustLease(t, w, facts, time.Second); a.Job.Name != "j" {
		t.Fatalf("leased %s, want j", a.Job.Name)
	}
}

// TestConcurrentObservers: many observers follow one run and all see the
// whole console, however it was chunked.
func TestConcurrentObservers(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	run, _ := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	a := mustLease(t, w, facts, time.Second)
	var want bytes.Buffer
	var wg sync.WaitGroup
	got := make([]bytes.Buffer, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := srv.Client().FollowLog(ctx, run.ID, &got[i]); err != nil {
				t.Error(err)
			}
		}()
	}
	off := int64(0)
	for i := range 300 {
		line := []byte(strings.Repeat("x", i%50) + "\n")
		want.Write(line)
		n, err := w.AppendLog(ctx, run.ID, a.Fence, off, line)
		if err != nil {
			t.Fatal(err)
		}
		off = n
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i := range got {
		if !bytes.Equal(got[i].Bytes(), want.Bytes()) {
			t.Fatalf("observer %d got %d bytes, want %d", i, got[i].Len(), want.Len())
		}
	}
}

// TestScheduleCatchUpAfterDowntime: a real server that was down for five
// periods fires a missed schedule once at start, and its next fire time is
// in the future again (so no further catch-up fire can follow).
func TestScheduleCatchUpAfterDowntime(t *testing.T) {
	srv := testsupport.StartServer(t, `cron_tick = "50ms"`)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	if _, err := admin.ScheduleJob(ctx, "j", "@hourly"); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	_, err := srv.DB().Exec(`UPDATE jobs SET next_fire = $1 WHERE name = 'j'`, time.Now().Add(-5*time.Hour).UnixNano())
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	var runs []api.Run
	for deadline := time.Now().Add(20 * time.Second); len(runs) == 0; time.Sleep(20 * time.Millisecond) {
		if runs, err = admin.ListRuns(ctx, "j", 0); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("missed schedule did not fire after restart")
		}
	}
	ji, err := admin.GetJob(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	runs, _ = admin.ListRuns(ctx, "j", 0)
	if len(runs) != 1 || runs[0].Trigger != "schedule" || !ji.NextFire.After(time.Now()) {
		t.Fatalf("catch-up: %d runs, next fire %v", len(runs), ji.NextFire)
	}
}

// TestJobRevisionsAndRemove: runs record and run the revision they were
// created from; removing a job cancels its queued runs but keeps history;
// a drained host gets nothing.
func TestJobRevisionsAndRemove(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "v1.toml"), filepath.Join(dir, "v2.toml")
	os.WriteFile(v1, []byte("name = \"j\"\nimage = \"bookworm\"\nscript = \"echo one\"\n"), 0o644)
	os.WriteFile(v2, []byte("name = \"j\"\nimage = \"bookworm\"\nscript = \"echo two\"\n"), 0o644)
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := srv.Run(args...)
		if code != 0 {
			t.Fatalf("kiln %v: %d %s", args, code, errOut)
		}
		return strings.TrimSpace(out)
	}
	run("job", "add", v1)
	r1 := run("job", "execute", "j")
	if rev := run("job", "modify", "j", v2); rev != "2" {
		t.Fatalf("modify printed %q, want revision 2", rev)
	}
	r2 := run("job", "execute", "j")
	run("job", "execute", "j")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	for _, want := range []struct{ id, script string }{{r1, "echo one"}, {r2, "echo two"}} {
		a := mustLease(t, w, facts, time.Second)
		if a.RunID != want.id || a.Job.Script != want.script {
			t.Fatalf("leased run %s with script %q, want run %s with %q", a.RunID, a.Job.Script, want.id, want.script)
		}
	}
	var listed []api.JobInfo
	if err := json.Unmarshal([]byte(run("job", "list", "--output", "json")), &listed); err != nil || len(listed) != 1 || listed[0].Revision != 2 {
		t.Fatalf("job list --output json: %+v %v", listed, err)
	}
	run("host", "drain", "h1")
	if _, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	if a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("drained host leased %+v %v", a, err)
	}
	run("job", "rm", "j")
	runs, err := admin.ListRuns(ctx, "j", 0)
	if err != nil || len(runs) != 4 {
		t.Fatalf("runs after rm: %d %v", len(runs), err)
	}
	for _, r := range runs {
		want := api.StateCancelled
		if r.ID == r1 || r.ID == r2 {
			want = api.StateLeased
		}
		if r.State != want {
			t.Fatalf("run %s (rev %d) is %s after job rm, want %s", r.ID, r.Revision, r.State, want)
		}
		if (r.ID == r1) != (r.Revision == 1) {
			t.Fatalf("run %s records revision %d", r.ID, r.Revision)
		}
	}
	if _, _, code := srv.Run("job", "info", "j"); code == 0 {
		t.Fatal("job info of a removed job succeeded")
	}
	var hosts []api.Host
	if err := json.Unmarshal([]byte(run("host", "list", "-O", "json")), &hosts); err != nil || len(hosts) != 1 || !hosts[0].Drained || hosts[0].Leases != 2 {
		t.Fatalf("host list: %+v %v", hosts, err)
	}
}

// TestConsoleCap: bytes past console_cap are acknowledged (the worker's
// offsets stay valid) but not stored, and readers are told.
func TestConsoleCap(t *testing.T) {
	srv := testsupport.StartServer(t, `console_cap = "10"`)
	ctx := context.Background()
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	run, _ := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	a := mustLease(t, w, facts, time.Second)
	n, err := w.AppendLog(ctx, run.ID, a.Fence, 0, []byte("0123456"))
	if err == nil {
		n, err = w.AppendLog(ctx, run.ID, a.Fence, n, []byte("789abcdefghijklmnop"))
	}
	if err != nil || n != 26 {
		t.Fatalf("appends past the cap: length %d %v, want 26", n, err)
	}
	lc, err := srv.Client().ReadLog(ctx, run.ID, 0, 0, 0)
	if err != nil || string(lc.Data) != "0123456789" || !lc.Truncated || lc.Size != 10 {
		t.Fatalf("capped log: %q size %d truncated %v %v", lc.Data, lc.Size, lc.Truncated, err)
	}
}

// TestObserveAcrossRestart: `kiln run observe` keeps following a run while
// the server is killed and restarted, and prints every byte once.
func TestObserveAcrossRestart(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	run, _ := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	a := mustLease(t, w, facts, time.Second)
	if _, err := w.AppendLog(ctx, run.ID, a.Fence, 0, []byte("before\n")); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	followed := make(chan error, 1)
	go func() { _, err := srv.Client().FollowLog(ctx, run.ID, &got); followed <- err }()
	time.Sleep(100 * time.Millisecond) // let the observer be in its long poll
	srv.Restart()
	if _, err := w.AppendLog(ctx, run.ID, a.Fence, 7, []byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	if err := <-followed; err != nil || got.String() != "before\nafter\n" {
		t.Fatalf("observer across restart: %q %v", got.String(), err)
	}
}

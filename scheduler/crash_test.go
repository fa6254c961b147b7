package scheduler_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// killAfter runs work in n goroutines until stop is closed, and SIGKILLs
// the server once acked() reaches min, while the work is still going on.
func killAfter(t *testing.T, srv *testsupport.TestServer, n int, acked func() int, atLeast int, work func(stop <-chan struct{})) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); work(stop) }()
	}
	for deadline := time.Now().Add(30 * time.Second); acked() < atLeast; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d operations acknowledged", acked(), atLeast)
		}
		time.Sleep(time.Millisecond)
	}
	srv.Kill()
	close(stop)
	wg.Wait()
	srv.Restart()
}

func crashServer(t *testing.T) (*testsupport.TestServer, *api.Client, api.Facts) {
	srv := testsupport.StartServer(t, `lease_duration = "10m"`)
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	return srv, enroll(t, srv, "h1", nil, facts), facts
}

func TestCrashDuringEnqueue(t *testing.T) {
	srv, _, _ := crashServer(t)
	admin := srv.Client()
	var mu sync.Mutex
	acked := map[string]bool{}
	killAfter(t, srv, 8, func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }, 200, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := admin.ExecuteJobWith(context.Background(), "j", api.ExecuteRequest{})
			if err != nil {
				return
			}
			mu.Lock()
			if acked[r.ID] {
				t.Errorf("run ID %s handed out twice", r.ID)
			}
			acked[r.ID] = true
			mu.Unlock()
		}
	})
	runs, err := admin.ListRuns(context.Background(), "j", 10000)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, r := range runs {
		have[r.ID] = r.State
	}
	for id := range acked {
		if have[id] != api.StateQueued {
			t.Fatalf("acknowledged run %s is %q after the crash", id, have[id])
		}
	}
	// The rebuilt queue still dispatches them.
	if q := metric(t, srv, `kiln_runs{state="queued"}`); q != float64(len(runs)) {
		t.Fatalf("queue depth %v, want %d", q, len(runs))
	}
}

func TestCrashDuringLease(t *testing.T) {
	srv, w, facts := crashServer(t)
	admin := srv.Client()
	ctx := context.Background()
	for range 400 {
		if _, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	acked := map[string]string{} // run -> fence
	killAfter(t, srv, 8, func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }, 100, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts})
			if err != nil || a == nil {
				return
			}
			mu.Lock()
			if _, dup := acked[a.RunID]; dup {
				t.Errorf("run %s leased twice", a.RunID)
			}
			acked[a.RunID] = a.Fence
			mu.Unlock()
		}
	})
	var refs []api.LeaseRef
	for id, f := range acked {
		refs = append(refs, api.LeaseRef{RunID: id, Fence: f})
	}
	hb, err := w.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts, Leases: refs})
	if err != nil {
		t.Fatal(err)
	}
	if len(hb.Renewed) != len(refs) || len(hb.Revoked) != 0 {
		t.Fatalf("after the crash %d of %d acknowledged leases hold (revoked %v)", len(hb.Renewed), len(refs), hb.Revoked)
	}
	// Runs never leased are still handed out, none of the acked ones again.
	for {
		a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts})
		if err != nil {
			t.Fatal(err)
		}
		if a == nil {
			break
		}
		if _, dup := acked[a.RunID]; dup {
			t.Fatalf("run %s leased again after the crash", a.RunID)
		}
	}
}

func TestCrashDuringLogAppend(t *testing.T) {
	srv, w, facts := crashServer(t)
	ctx := context.Background()
	run, err := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, time.Second)
	var sent bytes.Buffer
	var ackedLen atomic.Int64
	chunk := func(i int) []byte {
		return []byte(fmt.Sprintf("line %06d %s\n", i, bytes.Repeat([]byte{'a' + byte(i%26)}, i%80)))
	}
	i := 0
	killAfter(t, srv, 1, func() int { return int(ackedLen.Load() / 4096) }, 50, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c := chunk(i)
			n, err := w.AppendLog(ctx, run.ID, a.Fence, int64(sent.Len()), c)
			if err != nil {
				return
			}
			i++
			sent.Write(c)
			ackedLen.Store(n)
		}
	})
	lc, err := srv.Client().ReadLog(ctx, run.ID, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if lc.Size < ackedLen.Load() {
		t.Fatalf("log has %d bytes after the crash, %d were acknowledged", lc.Size, ackedLen.Load())
	}
	// Resume as a worker does: from the acknowledged offset, repeating
	// what may or may not have landed.
	off := ackedLen.Load()
	for j := i; j < i+20; j++ {
		sent.Write(chunk(j))
	}
	if _, err := w.AppendLog(ctx, run.ID, a.Fence, off, sent.Bytes()[off:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := srv.Client().FollowLog(ctx, run.ID, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), sent.Bytes()) {
		t.Fatalf("console after crash and resume: %d bytes, want %d (lost or duplicated data)", got.Len(), sent.Len())
	}
}

// slowReader serves a byte slice slowly so that a kill lands mid-upload.
type slowReader struct{ b []byte }

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(2 * time.Millisecond)
	if off >= int64(len(s.b)) {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 32<<10)], s.b[off:])
	return n, nil
}

func TestCrashDuringArtifactUpload(t *testing.T) {
	srv, w, facts := crashServer(t)
	ctx := context.Background()
	run, err := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustLease(t, w, facts, time.Second)
	data := make([]byte, 8<<20)
	rand.Read(data)
	sum := sha(data)
	done := make(chan error, 1)
	go func() { done <- w.UploadArtifact(ctx, run.ID, a.Fence, sum, slowReader{data}, int64(len(data))) }()
	for {
		_, got, err := w.ArtifactReceived(ctx, run.ID, a.Fence, sum)
		if err != nil {
			t.Fatal(err)
		}
		if got > 1<<20 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.Kill()
	if err := <-done; err == nil {
		t.Fatal("upload succeeded although the server was killed during it")
	}
	srv.Restart()
	complete, got, err := w.ArtifactReceived(ctx, run.ID, a.Fence, sum)
	if err != nil || complete || got == 0 {
		t.Fatalf("partial upload after crash: complete %v received %d %v", complete, got, err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence,
		Artifacts: []api.Artifact{{Path: "big.bin", Size: int64(len(data)), SHA256: sum}}}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("result naming a partial upload: %v", err)
	}
	// Resume uploads only the rest; the result then goes through.
	if err := w.UploadArtifact(ctx, run.ID, a.Fence, sum, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReportResult(ctx, run.ID, api.ResultRequest{Fence: a.Fence,
		Artifacts: []api.Artifact{{Path: "big.bin", Size: int64(len(data)), SHA256: sum}}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := srv.Client().DownloadBlob(ctx, sum, &buf); err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("artifact after crash and resume differs: %v", err)
	}
}

func TestCrashDuringCompletion(t *testing.T) {
	srv, w, facts := crashServer(t)
	ctx := context.Background()
	admin := srv.Client()
	var leases []*api.Assignment
	for range 300 {
		if _, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
			t.Fatal(err)
		}
		leases = append(leases, mustLease(t, w, facts, time.Second))
	}
	var mu sync.Mutex
	acked := map[string]int{} // run -> exit code acknowledged
	next := 0
	killAfter(t, srv, 8, func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }, 100, func(stop <-chan struct{}) {
		for {
			mu.Lock()
			if next == len(leases) {
				mu.Unlock()
				return
			}
			a := leases[next]
			next++
			mu.Unlock()
			select {
			case <-stop:
				return
			default:
			}
			code := 1 + len(a.RunID)%7
			r, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, ExitCode: code})
			if err != nil {
				return
			}
			if r.ExitCode == nil || *r.ExitCode != code {
				t.Errorf("run %s: answer %+v", a.RunID, r)
			}
			mu.Lock()
			acked[a.RunID] = code
			mu.Unlock()
		}
	})
	// Every worker retries every result with exit code 0: acknowledged
	// ones must keep their first result, the others complete now.
	for _, a := range leases {
		r, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, ExitCode: 0})
		if err != nil {
			t.Fatalf("retried result of %s: %v", a.RunID, err)
		}
		want, wasAcked := acked[a.RunID]
		switch {
		case wasAcked && (r.State != api.StateFailed || *r.ExitCode != want):
			t.Fatalf("run %s completed twice: acknowledged exit %d, now %+v", a.RunID, want, r)
		case !api.Terminal(r.State):
			t.Fatalf("run %s not finished: %+v", a.RunID, r)
		}
	}
	if n := metric(t, srv, `kiln_runs{state="queued"}`) + metric(t, srv, `kiln_runs{state="leased"}`); n != 0 {
		t.Fatalf("%v runs not finished", n)
	}
}

// metric reads one sample from /metrics.
func metric(t *testing.T, srv *testsupport.TestServer, name string) float64 {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s in:\n%s", name, b)
	return 0
}

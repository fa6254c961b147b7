package scheduler_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// replicas starts n `kiln server` replicas on one new PostgreSQL database
// and one shared data dir; the first one made the admin token.
func replicas(t *testing.T, n int, extraConfig ...string) (*testsupport.Postgres, []*testsupport.TestServer) {
	t.Helper()
	pg := testsupport.StartPostgres(t)
	url := pg.NewDatabase()
	var srvs []*testsupport.TestServer
	dataDir := ""
	for range n {
		s := testsupport.StartServerOn(t, url, dataDir, extraConfig...)
		dataDir = s.DataDir
		srvs = append(srvs, s)
	}
	return pg, srvs
}

// multi is a client of every replica, in the order given.
func multi(token string, srvs ...*testsupport.TestServer) *api.Client {
	list := ""
	for i, s := range srvs {
		if i > 0 {
			list += ","
		}
		list += s.URL
	}
	return api.NewClient(list, token)
}

// fakeWorker leases runs through w until stop, writes "run ID\n" to each
// one's console and reports success, retrying every call until it is
// answered (as kiln worker does). It records the attempts it leased.
func fakeWorker(t *testing.T, w *api.Client, facts api.Facts, stop <-chan struct{}, mu *sync.Mutex, leased map[string][]int) {
	ctx := context.Background()
	retry := func(f func() error) {
		for f() != nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		a, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(200 * time.Millisecond)})
		if err != nil || a == nil {
			continue
		}
		mu.Lock()
		leased[a.RunID] = append(leased[a.RunID], a.Attempt)
		mu.Unlock()
		line := []byte("run " + a.RunID + "\n")
		retry(func() error {
			_, err := w.AppendLog(ctx, a.RunID, a.Fence, 0, line)
			if errors.Is(err, api.ErrStaleFence) {
				return nil
			}
			return err
		})
		retry(func() error {
			_, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence})
			if errors.Is(err, api.ErrStaleFence) {
				return nil
			}
			return err
		})
	}
}

// TestReplicaKilled: two replicas serve one farm; one is SIGKILLed while
// runs are queued and running. Every run still ends, succeeded, exactly
// once (one lease per attempt; a second attempt only for a lease whose
// answer died with the replica), with its console whole, through the
// other replica, whose leader lock lets it expire such leases.
func TestReplicaKilled(t *testing.T) {
	_, srvs := replicas(t, 2, `lease_duration = "3s"`, `lease_check = "200ms"`)
	a, b := srvs[0], srvs[1]
	admin := multi(a.AdminToken(), a, b)
	ctx := context.Background()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	w := multi(enroll(t, a, "h1", nil, facts).Token, a, b)
	const runs = 60
	var ids []string
	for range runs {
		r, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	var mu sync.Mutex
	leased := map[string][]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); fakeWorker(t, w, facts, stop, &mu, leased) }()
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(leased)
		mu.Unlock()
		if n >= runs/4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d runs leased", n)
		}
	}
	a.Kill()
	// Every run ends through b.
	for _, id := range ids {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			r, err := admin.GetRun(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if api.Terminal(r.State) {
				if r.State != api.StateSucceeded {
					t.Fatalf("run %s ended %s (%s)", id, r.State, r.Error)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %s still %s after the replica was killed:\n%s", id, r.State, b.Log())
			}
		}
	}
	close(stop)
	wg.Wait()
	for _, id := range ids {
		seen := map[int]bool{}
		for _, at := range leased[id] {
			if seen[at] {
				t.Errorf("run %s attempt %d leased twice", id, at)
			}
			seen[at] = true
		}
		lc, err := admin.ReadLog(ctx, id, 0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if want := "run " + id + "\n"; string(lc.Data) != want {
			t.Errorf("run %s console %q, want %q", id, lc.Data, want)
		}
	}
}

// TestPostgresRestart: PostgreSQL stopped hard (pg_ctl -m immediate)
// under two replicas: they answer 503 (not 500) while it is away,
// reconnect by themselves when it is back, and keep every run they
// acknowledged.
func TestPostgresRestart(t *testing.T) {
	pg, srvs := replicas(t, 2)
	a, b := srvs[0], srvs[1]
	admin := multi(a.AdminToken(), a, b)
	ctx := context.Background()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	var ids []string
	for range 20 {
		r, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	pg.StopImmediate()
	for _, s := range srvs {
		code, body := call(t, "GET", s.URL+"/v1/runs/"+ids[0], s.AdminToken(), nil)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("%s with PostgreSQL away: %d %+v, want 503", s.URL, code, body)
		}
	}
	pg.Start()
	for _, s := range srvs {
		c := s.Client()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := c.ListJobs(ctx); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("%s did not reconnect: %v", s.URL, err)
			}
		}
	}
	runs, err := admin.ListRuns(ctx, "j", 0)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, r := range runs {
		have[r.ID] = r.State
	}
	for _, id := range ids {
		if have[id] != api.StateQueued {
			t.Fatalf("acknowledged run %s is %q after the restart", id, have[id])
		}
	}
	// A worker long-polling b gets a run queued through a, and the
	// replicas still lease each run once.
	facts := hostFacts("bookworm")
	facts.FreeSlots = 1 << 20
	w := enroll(t, b, "h1", nil, facts)
	got := map[string]bool{}
	for range ids {
		as := mustLease(t, w, facts, 30*time.Second)
		if got[as.RunID] {
			t.Fatalf("run %s leased twice", as.RunID)
		}
		got[as.RunID] = true
	}
	r, err := a.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if as := mustLease(t, w, facts, 30*time.Second); as.RunID != r.ID {
		t.Fatalf("leased run %s, want %s (queued through the other replica)", as.RunID, r.ID)
	}
}

// TestReplicasFireScheduleOnce: two replicas' schedulers on one schedule
// fire one run per tick.
func TestReplicasFireScheduleOnce(t *testing.T) {
	_, srvs := replicas(t, 2, `cron_tick = "20ms"`)
	admin := multi(srvs[0].AdminToken(), srvs...)
	ctx := context.Background()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	if _, err := admin.ScheduleJob(ctx, "j", "@every 1s"); err != nil {
		t.Fatal(err)
	}
	// Kill the leader midway, whichever it is, so that both replicas run
	// the schedule in turn.
	var runs []api.Run
	killed := false
	for deadline := time.Now().Add(60 * time.Second); len(runs) < 6; time.Sleep(100 * time.Millisecond) {
		var err error
		if runs, err = admin.ListRuns(ctx, "j", 0); err != nil {
			t.Fatal(err)
		}
		if len(runs) >= 3 && !killed {
			for _, s := range srvs {
				if leads(s) {
					s.Kill()
					killed = true
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d runs fired in 60s", len(runs))
		}
	}
	seconds := map[int64]string{}
	for _, r := range runs {
		sec := r.Created.Truncate(time.Second).Unix()
		if other, dup := seconds[sec]; dup {
			t.Fatalf("runs %s and %s fired in the same tick (%s)", other, r.ID, strconv.FormatInt(sec, 10))
		}
		seconds[sec] = r.ID
	}
	if !killed {
		t.Fatal("no replica said it leads")
	}
}

// leads reports whether s logged that it holds the leader lock.
func leads(s *testsupport.TestServer) bool {
	return strings.Contains(s.Log(), "this replica leads")
}

// TestReplicasNotify: the replicas tell each other through PostgreSQL
// notifications, not only by polling. A run queued through replica A,
// where no worker waits, is announced to replica B; its lease and result,
// through B, are announced to A (observers there follow the run).
func TestReplicasNotify(t *testing.T) {
	_, srvs := replicas(t, 2)
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	facts := hostFacts("bookworm")
	w := enroll(t, b, "w", nil, facts)
	// A notification sent before a replica's LISTEN never reaches it.
	waitListening(t, a, chanRunName)
	waitListening(t, b, chanQueueName)
	addJob(t, a.Client(), "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	if _, err := a.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	waitNotifications(t, b, chanQueueName, 1)
	l := mustLease(t, w, facts, 5*time.Second)
	if _, err := w.ReportResult(ctx, l.RunID, api.ResultRequest{Fence: l.Fence}); err != nil {
		t.Fatal(err)
	}
	waitNotifications(t, a, chanRunName, 2) // leased, ended
}

// The notification channels, as kiln_replica_notifications_total names them.
const (
	chanQueueName = "kiln_queue"
	chanRunName   = "kiln_run"
	chanAuthName  = "kiln_auth"
)

// waitNotifications waits until srv has received at least n notifications
// on channel.
func waitNotifications(t *testing.T, srv *testsupport.TestServer, channel string, n float64) {
	t.Helper()
	name := `kiln_replica_notifications_total{channel="` + channel + `"}`
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		got := 0.0
		if strings.Contains(metricsText(t, srv), name+" ") {
			got = metric(t, srv, name)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s received %v notifications on %s, want %v", srv.URL, got, channel, n)
		}
	}
}

// waitListening waits until srv listens on channel: its notification
// counter for it exists (at 0) from the moment its LISTEN is done, and a
// notification sent before that would never reach it.
func waitListening(t *testing.T, srv *testsupport.TestServer, channel string) {
	t.Helper()
	name := `kiln_replica_notifications_total{channel="` + channel + `"} `
	for deadline := time.Now().Add(time.Minute); !strings.Contains(metricsText(t, srv), name); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s", srv.URL, channel)
		}
	}
}

func metricsText(t *testing.T, srv *testsupport.TestServer) string {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReplicasPlaceGroupApart: the members of a reproduce group go to
// distinct hosts across replicas. Host h1 takes a member through replica
// A; through replica B, whose own queue never saw that placement but does
// hold the other member, h1 gets nothing, and h2 gets that member.
func TestReplicasPlaceGroupApart(t *testing.T) {
	_, srvs := replicas(t, 2, `reproduce_wait = "1h"`)
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	admin := a.Client()
	facts := hostFacts("busybox") // two free slots
	h1 := enroll(t, a, "h1", nil, facts).Token
	h2 := enroll(t, a, "h2", nil, facts).Token
	addJob(t, admin, "name = \"twin\"\nimage = \"busybox\"\nscript = \"true\"\nreproduce = 2\n")
	if _, err := admin.ExecuteJobWith(ctx, "twin", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	first := mustLease(t, a.ClientWith(h1), facts, 5*time.Second)
	// Longer than B's poll for runs queued elsewhere: B offers the other
	// member to h1 during this wait, whether or not a notification came.
	got, err := b.ClientWith(h1).Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got != nil {
		t.Fatalf("replica B leased member %d of group %s to h1, which holds member %d through replica A", got.Member, got.Group, first.Member)
	}
	second := mustLease(t, b.ClientWith(h2), facts, 5*time.Second)
	if second.Group != first.Group || second.Member == first.Member {
		t.Fatalf("h2 leased group %s member %d; want group %s, the member h1 does not hold (%d)", second.Group, second.Member, first.Group, first.Member)
	}
}

// TestReplicasShareUploadLocks: an upload session is busy across the
// replicas sharing a blob directory. While replica A writes an uploader's
// partial upload, the same uploader resuming it through replica B is told
// that nothing is received (409, length 0) rather than let write into the
// file A writes; A's upload then completes, whole.
func TestReplicasShareUploadLocks(t *testing.T) {
	_, srvs := replicas(t, 2)
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	data := bytes.Repeat([]byte("kiln upload\n"), 1<<16)
	sum := sha(data)
	path := "/v1/blobs/" + sum + "?size=" + strconv.Itoa(len(data))
	put := func(srv *testsupport.TestServer, offset int, body io.Reader) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, srv.URL+path+"&offset="+strconv.Itoa(offset), body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+a.AdminToken())
		return http.DefaultClient.Do(req)
	}

	const head = 100
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		resp, err := put(a, 0, pr)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				err = fmt.Errorf("upload through A: %s", resp.Status)
			}
		}
		done <- err
	}()
	if _, err := pw.Write(data[:head]); err != nil {
		t.Fatal(err)
	}
	bc := b.ClientWith(a.AdminToken())
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		complete, n, err := bc.BlobReceived(ctx, sum)
		if err != nil || complete {
			t.Fatalf("blob through B: complete %v, %v", complete, err)
		}
		if n == head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B sees %d bytes of the upload A writes, want %d", n, head)
		}
	}
	resp, err := put(b, head, bytes.NewReader(data[head:]))
	if err != nil {
		t.Fatal(err)
	}
	var body api.ErrorBody
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || body.Code != "blob_offset" || body.Length == nil || *body.Length != 0 {
		t.Fatalf("resuming through B while A writes the session: %s %+v; want 409 blob_offset with length 0", resp.Status, body)
	}
	if _, err := pw.Write(data[head:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := bc.DownloadBlob(ctx, sum, &got); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("blob after the upload through A: %d bytes, %v", got.Len(), err)
	}
}

// TestReplicasRevokeEverywhere: a client token revoked and a host removed
// through replica A are refused by replica B at once, though B had them
// cached: each check follows the arrival of A's notification at B, not
// the expiry of B's cache entries.
func TestReplicasRevokeEverywhere(t *testing.T) {
	_, srvs := replicas(t, 2)
	a, b := srvs[0], srvs[1]
	ctx := context.Background()
	admin := a.Client()
	waitListening(t, b, chanAuthName)
	ct, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	alice := b.ClientWith(ct.Token)
	if _, err := alice.ListJobs(ctx); err != nil { // now cached on B
		t.Fatal(err)
	}
	if err := admin.RevokeClientToken(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	waitNotifications(t, b, chanAuthName, 1)
	if _, err := alice.ListJobs(ctx); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("revoked client token through replica B: %v, want unauthorized", err)
	}

	facts := hostFacts("busybox")
	tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	er, err := a.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: "h2", Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	w := b.ClientWith(er.Token)
	if _, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(10 * time.Millisecond)}); err != nil { // now cached on B
		t.Fatal(err)
	}
	if err := admin.RemoveHost(ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	waitNotifications(t, b, chanAuthName, 2)
	if _, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(10 * time.Millisecond)}); !errors.Is(err, api.ErrUnauthorized) {
		t.Fatalf("removed host's worker token through replica B: %v, want unauthorized", err)
	}
}

package scheduler_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// receiver is an HTTP receiver of events on 127.0.0.1 that can go down
// and come back on the same port.
type receiver struct {
	t      *testing.T
	secret []byte
	addr   string
	mu     sync.Mutex
	srv    *http.Server
	got    []received
}

type received struct {
	path, event, delivery string
	signed                bool
	payload               api.NotifyPayload
}

func startReceiver(t *testing.T, secret []byte) *receiver {
	r := &receiver{t: t, secret: secret, addr: "127.0.0.1:0"}
	r.up()
	t.Cleanup(r.down)
	return r
}

func (r *receiver) url(path string) string { return "http://" + r.addr + path }

func (r *receiver) up() {
	r.t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (r *receiver) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	got := received{path: req.URL.Path, event: req.Header.Get("X-Kiln-Event"), delivery: req.Header.Get("X-Kiln-Delivery")}
	got.signed = hmac.Equal([]byte(req.Header.Get("X-Kiln-Signature-256")), []byte(hubSign(string(r.secret), body)))
	_ = json.Unmarshal(body, &got.payload)
	r.mu.Lock()
	r.got = append(r.got, got)
	r.mu.Unlock()
	if req.URL.Path == "/redirect" {
		http.Redirect(w, req, r.url("/elsewhere"), http.StatusFound)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// forRun lists what came for run id.
func (r *receiver) forRun(id string) []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []received
	for _, g := range r.got {
		if g.payload.Run != nil && g.payload.Run.ID == id {
			out = append(out, g)
		}
	}
	return out
}

func (r *receiver) paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, g := range r.got {
		out = append(out, g.path)
	}
	return out
}

// waitNotification polls run id until its delivery to url is in state.
func waitNotification(t *testing.T, c *api.Client, id, url, state string) api.Notification {
	t.Helper()
	var last []api.Notification
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		run, err := c.GetRun(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		last = run.Notifications
		for _, n := range run.Notifications {
			if n.URL == url && n.State == state {
				return n
			}
		}
	}
	t.Fatalf("run %s: no %s delivery to %s in 90s: %+v", id, state, url, last)
	return api.Notification{}
}

// failRun queues job, leases it with w and reports it failed.
func failRun(t *testing.T, c *api.Client, w *testsupport.FakeWorker, job string, code int) string {
	t.Helper()
	run, err := c.ExecuteJobWith(context.Background(), job, api.ExecuteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a := w.Lease()
	if a.RunID != run.ID {
		t.Fatalf("leased %s, queued %s", a.RunID, run.ID)
	}
	w.Finish(a, api.ResultRequest{ExitCode: code})
	return run.ID
}

// TestNotifyOut: a receiver gets a signed event for a failed run; down
// for 30 s, it gets the event once it is back; a server SIGKILLed with a
// delivery pending sends it after its restart; a redirect is not followed.
func TestNotifyOut(t *testing.T) {
	secret := []byte("notify-secret-0123456789")
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "notify.secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := startReceiver(t, secret)
	srv := testsupport.StartServer(t, fmt.Sprintf(`notify_tick = "200ms"
notify_backoff = "1s"
notify_backoff_max = "4s"
notify_timeout = "5s"
notify_retry_for = "10m"
[[notify]]
url = %q
events = ["run.failed"]
secret_file = %q
[notify_secrets.team]
file = %q
owners = ["admin"]`, rcv.url("/hook"), secretFile, secretFile))
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"app\"\nimage = \"bookworm\"\nscript = \"false\"\n")
	w := testsupport.EnrollFakeWorker(t, srv.URL, admin, "h1", hostFacts("bookworm"))

	// A failed run: one signed event.
	id := failRun(t, admin, w, "app", 1)
	n := waitNotification(t, admin, id, rcv.url("/hook"), api.NotifyDelivered)
	got := rcv.forRun(id)
	if len(got) != 1 || !got[0].signed || got[0].event != api.EventRunFailed || got[0].payload.Event != api.EventRunFailed ||
		got[0].payload.Run.State != api.StateFailed || got[0].delivery == "" || got[0].delivery != got[0].payload.Delivery || n.Tries != 1 {
		t.Fatalf("receiver got %+v (notification %+v)", got, n)
	}
	out, _, code := srv.Run("run", "info", id)
	if code != 0 || !strings.Contains(out, "notify:") || !strings.Contains(out, rcv.url("/hook")+" (run.failed): delivered") {
		t.Errorf("run info:\n%s", out)
	}

	// Down for 30 s: tried and tried again, delivered once it is back.
	rcv.down()
	id = failRun(t, admin, w, "app", 2)
	time.Sleep(30 * time.Second)
	run, err := admin.GetRun(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Notifications) != 1 || run.Notifications[0].State != api.NotifyPending || run.Notifications[0].Tries < 2 || run.Notifications[0].LastError == "" {
		t.Fatalf("after 30 s down: %+v", run.Notifications)
	}
	rcv.up()
	waitNotification(t, admin, id, rcv.url("/hook"), api.NotifyDelivered)
	if got := rcv.forRun(id); len(got) != 1 || !got[0].signed {
		t.Fatalf("after the receiver came back: %+v", got)
	}

	// SIGKILL with a delivery pending: sent after the restart.
	rcv.down()
	id = failRun(t, admin, w, "app", 3)
	waitNotification(t, admin, id, rcv.url("/hook"), api.NotifyPending)
	srv.Kill()
	rcv.up()
	srv.Restart()
	waitNotification(t, admin, id, rcv.url("/hook"), api.NotifyDelivered)
	if got := rcv.forRun(id); len(got) != 1 || !got[0].signed {
		t.Fatalf("after the restart: %+v", got)
	}

	// A job's own [[notify]] whose receiver redirects: not followed,
	// failed at once.
	addJob(t, admin, fmt.Sprintf("name = \"ok\"\nimage = \"bookworm\"\nscript = \"true\"\n[[notify]]\nurl = %q\nevents = [\"run.succeeded\"]\nsecret = \"team\"\n", rcv.url("/redirect")))
	id = failRun(t, admin, w, "ok", 0)
	n = waitNotification(t, admin, id, rcv.url("/redirect"), api.NotifyFailed)
	if n.Tries != 1 || !strings.Contains(n.LastError, "redirect") {
		t.Errorf("redirected delivery: %+v", n)
	}
	got = rcv.forRun(id)
	if len(got) != 1 || !got[0].signed || got[0].event != api.EventRunSucceeded {
		t.Errorf("job notify: %+v", got)
	}
	for _, p := range rcv.paths() {
		if p == "/elsewhere" {
			t.Error("the redirect was followed")
		}
	}
	out, _, _ = srv.Run("run", "info", id)
	if !strings.Contains(out, "(run.succeeded): failed after 1 tries: ") {
		t.Errorf("run info:\n%s", out)
	}
}

// TestNotifyRefused: a job's [[notify]] may not name link-local or
// metadata addresses, nor a secret its owner was not given.
func TestNotifyRefused(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "s")
	if err := os.WriteFile(secretFile, []byte("team-secret-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testsupport.StartServer(t, fmt.Sprintf("[notify_secrets.team]\nfile = %q\nowners = [\"team\"]", secretFile))
	ctx := context.Background()
	admin := srv.Client()
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	other := srv.ClientWith(tok.Token)
	teamTok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "t1", Group: "team"})
	if err != nil {
		t.Fatal(err)
	}
	team := srv.ClientWith(teamTok.Token)
	for i, tc := range []struct {
		name, notify string
		c            *api.Client
		ok           bool
	}{
		{"metadata address", `url = "http://169.254.169.254/latest"` + "\nevents = [\"run.failed\"]", admin, false},
		{"link-local v6", `url = "http://[fe80::1]:8080/"` + "\nevents = [\"run.failed\"]", admin, false},
		{"mapped link-local", `url = "http://[::ffff:169.254.1.1]/"` + "\nevents = [\"run.failed\"]", admin, false},
		{"unspecified", `url = "http://0.0.0.0/"` + "\nevents = [\"run.failed\"]", admin, false},
		{"user in url", `url = "http://u:p@127.0.0.1/"` + "\nevents = [\"run.failed\"]", admin, false},
		{"ftp", `url = "ftp://127.0.0.1/"` + "\nevents = [\"run.failed\"]", admin, false},
		{"unknown event", `url = "http://127.0.0.1/"` + "\nevents = [\"run.exploded\"]", admin, false},
		{"no events", `url = "http://127.0.0.1/"` + "\nevents = []", admin, false},
		{"secret of another owner", `url = "http://127.0.0.1/"` + "\nevents = [\"run.failed\"]\nsecret = \"team\"", other, false},
		{"no such secret", `url = "http://127.0.0.1/"` + "\nevents = [\"run.failed\"]\nsecret = \"nope\"", admin, false},
		{"the team's secret", `url = "http://127.0.0.1/"` + "\nevents = [\"run.failed\"]\nsecret = \"team\"", team, true},
		{"loopback, unsigned", `url = "http://127.0.0.1:1/x"` + "\nevents = [\"run.failed\", \"group.verdict\"]", other, true},
	} {
		name := fmt.Sprintf("j%d", i)
		t.Run(tc.name, func(t *testing.T) {
			j, err := api.ParseJobFile([]byte(fmt.Sprintf("name = %q\nimage = \"bookworm\"\nscript = \"true\"\n[[notify]]\n%s\n", name, tc.notify)))
			if err == nil {
				_, err = tc.c.AddJob(ctx, j)
			}
			if (err == nil) != tc.ok {
				t.Errorf("added: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// TestNotifyGroupVerdict: a decided reproduce group sends one
// group.verdict event (not one per member), next to its members' run
// events.
func TestNotifyGroupVerdict(t *testing.T) {
	secret := []byte("verdict-secret-0123456789")
	secretFile := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := startReceiver(t, secret)
	srv := testsupport.StartServer(t, fmt.Sprintf("reproduce_wait = \"1s\"\nnotify_tick = \"200ms\"\n[[notify]]\nurl = %q\nevents = [\"group.verdict\", \"run.succeeded\"]\nsecret_file = %q",
		rcv.url("/v"), secretFile))
	admin := srv.Client()
	addJob(t, admin, "name = \"twin\"\nimage = \"bookworm\"\nscript = \"true\"\nreproduce = 2\n")
	w := testsupport.EnrollFakeWorker(t, srv.URL, admin, "h1", hostFacts("bookworm"))
	run, err := admin.ExecuteJobWith(context.Background(), "twin", api.ExecuteRequest{})
	if err != nil || run.Group == "" {
		t.Fatalf("execute: %+v %v", run, err)
	}
	for range 2 {
		a := w.Lease()
		w.Finish(a, api.ResultRequest{})
	}
	n := waitNotification(t, admin, run.ID, rcv.url("/v"), api.NotifyDelivered)
	if n.Event != api.EventRunSucceeded && n.Event != api.EventGroupVerdict {
		t.Fatalf("notification %+v", n)
	}
	var verdicts []received
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		rcv.mu.Lock()
		verdicts = verdicts[:0]
		runs := 0
		for _, g := range rcv.got {
			switch g.event {
			case api.EventGroupVerdict:
				verdicts = append(verdicts, g)
			case api.EventRunSucceeded:
				runs++
			}
		}
		rcv.mu.Unlock()
		if len(verdicts) >= 1 && runs == 2 {
			break
		}
	}
	time.Sleep(time.Second) // a second verdict would come within a tick
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	count := 0
	for _, g := range rcv.got {
		if g.event == api.EventGroupVerdict {
			count++
			if !g.signed || g.payload.Group != run.Group || g.payload.Verdict == nil {
				t.Errorf("verdict event %+v", g)
			}
		}
	}
	if count != 1 {
		t.Errorf("%d group.verdict events, want 1 (all: %+v)", count, rcv.got)
	}
}

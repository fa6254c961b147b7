package scheduler_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestNotifySkipped: a run skipped because a run it needed failed is
// announced as run.skipped, not run.failed; the failed need is run.failed.
func TestNotifySkipped(t *testing.T) {
	secret := []byte("skipped-secret-0123456789")
	secretFile := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := startReceiver(t, secret)
	srv := testsupport.StartServer(t, fmt.Sprintf("notify_tick = \"200ms\"\n[[notify]]\nurl = %q\nevents = [\"run.failed\", \"run.skipped\"]\nsecret_file = %q",
		rcv.url("/s"), secretFile))
	admin := srv.Client()
	addJob(t, admin, "name = \"lib\"\nimage = \"bookworm\"\nscript = \"false\"\n")
	addJob(t, admin, "name = \"app\"\nimage = \"bookworm\"\nscript = \"true\"\n[[needs]]\njob = \"lib\"\n")
	w := testsupport.EnrollFakeWorker(t, srv.URL, admin, "h1", hostFacts("bookworm"))
	app, err := admin.ExecuteJobWith(context.Background(), "app", api.ExecuteRequest{})
	if err != nil || app.State != api.StateDepWait {
		t.Fatalf("execute app: %+v %v", app, err)
	}
	a := w.Lease()
	w.Finish(a, api.ResultRequest{ExitCode: 1})

	n := waitNotification(t, admin, app.ID, rcv.url("/s"), api.NotifyDelivered)
	got := rcv.forRun(app.ID)
	if n.Event != api.EventRunSkipped || len(got) != 1 || !got[0].signed || got[0].event != api.EventRunSkipped ||
		got[0].payload.Event != api.EventRunSkipped || got[0].payload.Run.State != api.StateSkipped {
		t.Fatalf("skipped run's events %+v (notification %+v)", got, n)
	}
	n = waitNotification(t, admin, a.RunID, rcv.url("/s"), api.NotifyDelivered)
	if got := rcv.forRun(a.RunID); n.Event != api.EventRunFailed || len(got) != 1 || got[0].event != api.EventRunFailed {
		t.Fatalf("failed need's events %+v (notification %+v)", got, n)
	}
}

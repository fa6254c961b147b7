package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// The server's identity is made once and kept across restarts (even a
// SIGKILL); it comes with enroll, heartbeats and every assignment, and
// another server has another.
func TestServerIdentity(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	tok, err := srv.Client().CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: "h1", Facts: hostFacts("busybox")})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.ServerID
	if len(id) != 16 {
		t.Fatalf("enroll gave server id %q, want 16 hex digits", id)
	}
	w := srv.ClientWith(resp.Token)
	srv.Restart() // SIGKILL and start again
	hb, err := w.Heartbeat(ctx, api.HeartbeatRequest{Facts: hostFacts("busybox")})
	if err != nil {
		t.Fatal(err)
	}
	if hb.ServerID != id {
		t.Fatalf("after a restart the heartbeat says server %q, enroll said %q", hb.ServerID, id)
	}
	addJob(t, srv.Client(), "name = \"j\"\nimage = \"busybox\"\nscript = \"true\"\n")
	if _, err := srv.Client().ExecuteJobWith(ctx, "j", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	if a := mustLease(t, w, hostFacts("busybox"), 10*time.Second); a.ServerID != id {
		t.Fatalf("assignment carries server %q, want %q", a.ServerID, id)
	}
	other := testsupport.StartServer(t)
	tok2, err := other.Client().CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp2, err := other.ClientWith(tok2.Token).Enroll(ctx, api.EnrollRequest{Name: "h1", Facts: hostFacts("busybox")})
	if err != nil {
		t.Fatal(err)
	}
	if resp2.ServerID == "" || resp2.ServerID == id {
		t.Fatalf("a fresh server's id is %q, the first's %q", resp2.ServerID, id)
	}
}

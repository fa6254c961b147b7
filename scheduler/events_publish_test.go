package scheduler_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestNotifyPublishDone: each publication of a run's packages into a
// repository is announced as a signed publish.done naming the repository,
// the packages and the outcome: new, unchanged (the same bytes again) and
// refused (other bytes for a published version).
func TestNotifyPublishDone(t *testing.T) {
	secret := []byte("publish-secret-0123456789")
	secretFile := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := startReceiver(t, secret)
	srv := testsupport.StartServer(t, fmt.Sprintf("notify_tick = \"200ms\"\n[[notify]]\nurl = %q\nevents = [\"publish.done\"]\nsecret_file = %q",
		rcv.url("/p"), secretFile))
	admin := srv.Client()
	ctx := context.Background()
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "tools", Suite: "stable", Arches: []string{"amd64"}}); err != nil {
		t.Fatal(err)
	}
	addJob(t, admin, publishJob("hi", "tools", "", 0))
	deb := testsupport.Deb(debControl("kiln-hi", "1.0-1", "amd64"), map[string]string{"usr/bin/kiln-hi": "#!/bin/sh\necho hi\n"})
	other := testsupport.Deb(debControl("kiln-hi", "1.0-1", "amd64"), map[string]string{"usr/bin/kiln-hi": "#!/bin/sh\necho HI\n"})
	for _, c := range []struct {
		deb   []byte
		state string
	}{
		{deb, api.PublishedNew},
		{deb, api.PublishedUnchanged},
		{other, api.PublishRefused},
	} {
		r := runWith(t, admin, w, facts, "hi", map[string]string{"out/kiln-hi_1.0-1_amd64.deb": string(c.deb)})
		waitNotification(t, admin, r.ID, rcv.url("/p"), api.NotifyDelivered)
		got := rcv.forRun(r.ID)
		if len(got) != 1 || !got[0].signed || got[0].event != api.EventPublishDone || got[0].payload.Event != api.EventPublishDone {
			t.Fatalf("run %s (%s): events %+v", r.ID, c.state, got)
		}
		p := got[0].payload.Publication
		if p == nil || p.Repo != "tools" || p.Run != r.ID || p.State != c.state || !slices.Equal(p.Packages, []string{"kiln-hi_1.0-1_amd64"}) {
			t.Fatalf("run %s: publication %+v, want %s of kiln-hi_1.0-1_amd64 into tools", r.ID, p, c.state)
		}
		if c.state == api.PublishRefused && p.Detail == "" {
			t.Fatalf("refused publication without a reason: %+v", p)
		}
	}
}

package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// publishTest stores content as a blob and publishes it as the next
// version of image name.
func publishTest(t *testing.T, s *Server, name, content string) api.ImageVersion {
	t.Helper()
	ctx := context.Background()
	b := sha256.Sum256([]byte(content))
	sha := hex.EncodeToString(b[:])
	if _, done, err := s.blobs.Write(ctx, sha, "test", 0, int64(len(content)), bytes.NewReader([]byte(content)), false); err != nil || !done {
		t.Fatalf("blob: %v %v", done, err)
	}
	td := sha256.Sum256([]byte("tar " + content))
	v, _, err := s.publishImage(ctx, api.ImageVersion{Name: name, Arch: "amd64", OS: "linux",
		TarDigest: "sha256:" + hex.EncodeToString(td[:]), TarSize: 1024, Blob: sha, BlobSize: int64(len(content))})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSchedulePinsAtEachFiring: a scheduled job's runs are pinned when
// the schedule fires, each firing to the newest version then; a job
// whose arch differs from every version's is not pinned (it names a
// host's own image).
func TestSchedulePinsAtEachFiring(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 9, 30, 0, 0, time.UTC)}
	s := newTestServer(t, clock)
	ctx := context.Background()
	v1 := publishTest(t, s, "bookworm", "one")
	for _, j := range []api.Job{
		{Name: "nightly", Image: "bookworm", Script: "true", Schedule: "@hourly"},
		{Name: "arm", Image: "bookworm", Arch: "arm64", Script: "true", Schedule: "@hourly"},
	} {
		if _, err := s.addJob(ctx, adminPrincipal, &j); err != nil {
			t.Fatal(err)
		}
	}
	fire := func() {
		t.Helper()
		clock.add(time.Hour)
		if err := s.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fire()
	v2 := publishTest(t, s, "bookworm", "two")
	fire()
	runs, err := s.listRuns(ctx, adminPrincipal, "nightly", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("%d runs, want 2", len(runs))
	}
	// Newest first.
	if runs[1].Image != v1.Ref() || runs[1].ImageDigest != v1.TarDigest || runs[0].Image != v2.Ref() || runs[0].ImageDigest != v2.TarDigest {
		t.Fatalf("pins: first %q %q, second %q %q", runs[1].Image, runs[1].ImageDigest, runs[0].Image, runs[0].ImageDigest)
	}
	arm, err := s.listRuns(ctx, adminPrincipal, "arm", 0, 0)
	if err != nil || len(arm) != 2 || arm[0].Image != "" || arm[1].Image != "" {
		t.Fatalf("a job for another arch than the versions' pinned: %+v %v", arm, err)
	}
}

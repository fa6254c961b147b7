package scheduler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeClock is a settable clock for New(WithClock).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestServer(t *testing.T, clock *fakeClock) *Server {
	t.Helper()
	cfg := config.DefaultServer()
	cfg.DataDir = t.TempDir()
	s, err := New(context.Background(), cfg, WithClock(clock.now), WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestParseSchedule(t *testing.T) {
	from := time.Date(2026, 3, 4, 10, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		spec string
		next time.Time // zero: invalid
	}{
		{"@hourly", time.Date(2026, 3, 4, 11, 0, 0, 0, time.UTC)},
		{"@daily", time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC)},
		{"@weekly", time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC)},
		{"@every 10m", from.Add(10 * time.Minute)},
		{"15 */2 * * 1-5", time.Date(2026, 3, 4, 12, 15, 0, 0, time.UTC)},
		{"* * *", time.Time{}},
		{"61 * * * *", time.Time{}},
		{"@every 1ms", time.Time{}},
		{"@fortnightly", time.Time{}},
		{"TZ=Europe/Berlin 0 * * * *", time.Time{}},
		{"", time.Time{}},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			sc, err := parseSchedule(tc.spec)
			if tc.next.IsZero() {
				if err == nil {
					t.Fatalf("accepted %q", tc.spec)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := sc.Next(from); !got.Equal(tc.next) {
				t.Fatalf("next after %v = %v, want %v", from, got, tc.next)
			}
		})
	}
}

// TestScheduleCatchUpFiresOnce: after a downtime of many periods a
// schedule fires once, then keeps its rhythm.
func TestScheduleCatchUpFiresOnce(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 9, 30, 0, 0, time.UTC)}
	s := newTestServer(t, clock)
	ctx := context.Background()
	if _, err := s.addJob(ctx, adminPrincipal, &api.Job{Name: "nightly", Image: "bookworm", Script: "true", Schedule: "@hourly"}); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		runs, err := s.listRuns(ctx, adminPrincipal, "nightly", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range runs {
			if r.Trigger != "schedule" {
				t.Fatalf("run %s trigger %q", r.ID, r.Trigger)
			}
		}
		return len(runs)
	}
	steps := []struct {
		advance time.Duration
		want    int
	}{
		{0, 0},                            // 09:30: not due
		{20 * time.Minute, 0},             // 09:50
		{15 * time.Minute, 1},             // 10:05: fired once
		{0, 1},                            // same instant: no second fire
		{5*time.Hour + 10*time.Minute, 2}, // 15:15 after a long downtime: once, not five times
		{30 * time.Minute, 2},             // 15:45
		{20 * time.Minute, 3},             // 16:05
	}
	for i, st := range steps {
		clock.add(st.advance)
		if err := s.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if got := count(); got != st.want {
			t.Fatalf("step %d (%v): %d runs, want %d", i, clock.now(), got, st.want)
		}
	}
	ji, err := s.getJob(ctx, adminPrincipal, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 1, 1, 17, 0, 0, 0, time.UTC); !ji.NextFire.Equal(want) {
		t.Fatalf("next fire %v, want %v", ji.NextFire, want)
	}
}

// TestLeaseExpiryAtStart: leases that ran out while the server was down
// are requeued by New, before any request is served.
func TestLeaseExpiryAtStart(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	cfg := config.DefaultServer()
	cfg.DataDir = dir
	ctx := context.Background()
	s, err := New(ctx, cfg, WithClock(clock.now), WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.addJob(ctx, adminPrincipal, &api.Job{Name: "j", Image: "bookworm", Script: "true"}); err != nil {
		t.Fatal(err)
	}
	facts := api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1, Images: []api.ImageFact{{Name: "bookworm", Versions: []string{"1"}}}}
	if _, err := s.enroll(ctx, &principal{hash: "none"}, &api.EnrollRequest{Name: "h", Facts: facts}); err == nil {
		t.Fatal("enroll without a stored enrollment token succeeded")
	}
	tok, _ := s.createEnrollmentToken(ctx, &api.EnrollmentTokenRequest{})
	if _, err := s.enroll(ctx, &principal{kind: kindEnrollment, hash: hashToken(tok.Token)}, &api.EnrollRequest{Name: "h", Facts: facts}); err != nil {
		t.Fatal(err)
	}
	run, err := s.executeJob(ctx, adminPrincipal, "j", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.lease(ctx, "h", &facts, false, 0)
	if err != nil || a == nil {
		t.Fatalf("lease: %+v %v", a, err)
	}
	s.Close()
	clock.add(2 * time.Duration(cfg.LeaseDuration))
	s2, err := New(ctx, cfg, WithClock(clock.now), WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	id, _ := parseRunID(run.ID)
	r, err := s2.getRun(ctx, id)
	if err != nil || r.State != api.StateQueued || r.Attempt != 2 {
		t.Fatalf("after restart past the lease: %+v %v", r, err)
	}
	if s2.disp.Depth() != 1 {
		t.Fatalf("requeued run not in the dispatcher")
	}
}

// adminPrincipal acts as the admin token in tests that call the server's
// methods directly.
var adminPrincipal = &principal{kind: kindAdmin}

// TestManySchedulesFireInBatches: more due schedules than one write takes
// all fire once each; a job stored before reproduce was bounded, with a
// reproduce too large to queue, fires nothing and holds up no other.
func TestManySchedulesFireInBatches(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 9, 30, 0, 0, time.UTC)}
	s := newTestServer(t, clock)
	ctx := context.Background()
	jobs := 2*fireBatch + 7
	for i := range jobs {
		j := &api.Job{Name: fmt.Sprintf("j%03d", i), Image: "bookworm", Script: "true", Schedule: "@hourly"}
		if _, err := s.addJob(ctx, adminPrincipal, j); err != nil {
			t.Fatal(err)
		}
	}
	err := s.st.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE job_revisions SET spec = json_set(spec, '$.reproduce', 1000000) WHERE name = 'j000'`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.add(time.Hour)
	if err := s.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	runs, err := s.listRuns(ctx, adminPrincipal, "", 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	perJob := map[string]int{}
	for _, r := range runs {
		perJob[r.Job]++
	}
	if len(runs) != jobs-1 || perJob["j000"] != 0 {
		t.Fatalf("%d runs (j000: %d), want %d and none of j000", len(runs), perJob["j000"], jobs-1)
	}
	for name, n := range perJob {
		if n != 1 {
			t.Fatalf("%s fired %d times", name, n)
		}
	}
}

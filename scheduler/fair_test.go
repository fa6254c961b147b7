package scheduler_test

import (
	"context"
	"errors"
	"html"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestOwnerLimits: against a real server, an owner's max_queued refuses
// the execute (one run, or a reproduce group) that would queue more, with
// 429 naming the limit; its max_running keeps a free slot from its queued
// runs (which say why they wait) until one of its runs ends; a client
// token may not execute above priority_ceiling, an admin may.
func TestOwnerLimits(t *testing.T) {
	srv := testsupport.StartServer(t, "priority_ceiling = 10", "[owners.ci-bot]", "max_queued = 3", "max_running = 1")
	ctx := context.Background()
	admin := srv.Client()
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci-bot"})
	if err != nil {
		t.Fatal(err)
	}
	bot := srv.ClientWith(tok.Token)
	addJob(t, bot, "name = \"build\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)

	execute := func(c *api.Client, req api.ExecuteRequest) (*api.Run, error) {
		return c.ExecuteJobWith(ctx, "build", req)
	}
	var runs []*api.Run
	for i := range 3 {
		r, err := execute(bot, api.ExecuteRequest{})
		if err != nil {
			t.Fatalf("execute %d of max_queued 3: %v", i+1, err)
		}
		runs = append(runs, r)
	}
	for _, tc := range []struct {
		name string
		c    *api.Client
		req  api.ExecuteRequest
	}{
		{"one more run", bot, api.ExecuteRequest{}},
		{"a reproduce group", bot, api.ExecuteRequest{Reproduce: 2}},
		{"an admin's execute of the owner's job", admin, api.ExecuteRequest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := execute(tc.c, tc.req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 429 || ae.Body.Code != api.CodeQueueFull || !errors.Is(err, api.ErrQueueFull) {
				t.Fatalf("execute over max_queued: %v, want 429 %s", err, api.CodeQueueFull)
			}
			if !strings.Contains(err.Error(), "max_queued is 3") || !strings.Contains(err.Error(), "ci-bot") {
				t.Fatalf("refusal %q does not name the owner and the limit", err)
			}
		})
	}

	// max_running = 1: the host has two free slots but gets one run.
	a := mustLease(t, w, facts, 10*time.Second)
	if none, err := w.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(300 * time.Millisecond)}); err != nil || none != nil {
		t.Fatalf("second lease with the owner at max_running: %+v, %v; want none", none, err)
	}
	waiting := runs[1].ID
	if a.RunID == waiting {
		waiting = runs[0].ID
	}
	r, err := bot.GetRun(ctx, waiting)
	if err != nil {
		t.Fatal(err)
	}
	if r.Waiting != "owner ci-bot has 1 of 1 running" {
		t.Fatalf("waiting %q, want the owner's max_running named", r.Waiting)
	}
	if page := runPage(t, srv, tok.Token, waiting); !strings.Contains(page, r.Waiting) {
		t.Fatalf("the run's web page does not say %q", r.Waiting)
	}
	if _, err := w.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence}); err != nil {
		t.Fatal(err)
	}
	if b := mustLease(t, w, facts, 10*time.Second); b.RunID == a.RunID {
		t.Fatalf("leased run %s again", b.RunID)
	}

	// priority_ceiling = 10.
	over := 11
	if _, err := execute(bot, api.ExecuteRequest{Priority: &over}); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("client execute above priority_ceiling: %v, want 403", err)
	}
	if _, err := bot.AddJob(ctx, &api.Job{Name: "urgent", Image: "bookworm", Script: "true", Priority: over}); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("client job above priority_ceiling: %v, want 403", err)
	}
	addJob(t, admin, "name = \"admin-job\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	hi, err := admin.ExecuteJobWith(ctx, "admin-job", api.ExecuteRequest{Priority: &over})
	if err != nil || hi.Priority != over {
		t.Fatalf("admin execute above priority_ceiling: %+v, %v", hi, err)
	}
}

// TestWaitBehindPriority: a queued run says how many runs of its owner
// go first by priority; the lease order follows priority within the
// owner.
func TestWaitBehindPriority(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"j\"\nimage = \"bookworm\"\nscript = \"true\"\npriority = 5\n")
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	low := 0
	first, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{Priority: &low})
	if err != nil {
		t.Fatal(err)
	}
	var high []string
	for range 2 {
		r, err := admin.ExecuteJobWith(ctx, "j", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Priority != 5 {
			t.Fatalf("run priority %d, want the job's 5", r.Priority)
		}
		high = append(high, r.ID)
	}
	r, err := admin.GetRun(ctx, first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Waiting != "behind 2 runs of the same owner with higher priority" {
		t.Fatalf("waiting %q", r.Waiting)
	}
	if page := runPage(t, srv, srv.AdminToken(), first.ID); !strings.Contains(page, r.Waiting) {
		t.Fatalf("the run's web page does not say %q", r.Waiting)
	}
	var got []string
	for range 3 {
		got = append(got, mustLease(t, w, facts, 10*time.Second).RunID)
	}
	if want := append(high, first.ID); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("lease order %v, want %v", got, want)
	}
}

// runPage is run id's web page as token sees it, its HTML unescaped.
func runPage(t *testing.T, srv *testsupport.TestServer, token, id string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/runs/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /runs/%s: %s, %v", id, resp.Status, err)
	}
	return html.UnescapeString(string(b))
}

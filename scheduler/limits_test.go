package scheduler_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestJobLimits: reproduce, the script and the job's size are bounded at
// job add and modify, so that one job cannot make the server insert runs
// (or store bytes) without bound; a job sent as JSON past the CLI's checks
// is refused by the server itself.
func TestJobLimits(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"ok\"\nimage = \"bookworm\"\nscript = \"true\"\n")
	job := func(mod func(*api.Job)) *api.Job {
		j := &api.Job{Name: "ok", Image: "bookworm", Script: "true"}
		mod(j)
		return j
	}
	for _, tc := range []struct {
		name string
		job  *api.Job
		want error
	}{
		{"reproduce 1000000", job(func(j *api.Job) { j.Reproduce = 1000000 }), api.ErrBadRequest},
		{"reproduce 17", job(func(j *api.Job) { j.Reproduce = api.MaxReproduce + 1 }), api.ErrBadRequest},
		{"script over 256KiB", job(func(j *api.Job) { j.Script = strings.Repeat("x", api.MaxScript+1) }), api.ErrBadRequest},
		{"job over 1MiB", job(func(j *api.Job) {
			j.Env = map[string]string{}
			for i := range 8 {
				j.Env["V"+strconv.Itoa(i)] = strings.Repeat("x", 200<<10)
			}
		}), api.ErrTooLarge},
		{"reproduce 16", job(func(j *api.Job) { j.Reproduce = api.MaxReproduce }), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := admin.ModifyJob(ctx, "ok", tc.job)
			if !errors.Is(err, tc.want) && (tc.want != nil || err != nil) {
				t.Fatalf("modify: %v, want %v", err, tc.want)
			}
			add := *tc.job
			add.Name = "new-" + strings.ReplaceAll(tc.name, " ", "-")
			_, err = admin.AddJob(ctx, &add)
			if !errors.Is(err, tc.want) && (tc.want != nil || err != nil) {
				t.Fatalf("add: %v, want %v", err, tc.want)
			}
		})
	}
	// The CLI refuses the same before sending anything.
	if _, err := api.ParseJobFile([]byte("name = \"x\"\nimage = \"i\"\nscript = \"s\"\nreproduce = 1000000\n")); !errors.Is(err, api.ErrInvalidJob) {
		t.Fatalf("job file with reproduce = 1000000: %v", err)
	}
	big := "name = \"x\"\nimage = \"i\"\nscript = \"s\"\n#" + strings.Repeat("x", api.MaxJobFile) + "\n"
	if _, err := api.ParseJobFile([]byte(big)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("job file over 1MiB: %v", err)
	}
}

// TestRateLimit: a client token over its rate is answered 429 with
// Retry-After, while another client token and the workers, which have
// buckets of their own, go on; the Go client waits as told and retries.
func TestRateLimit(t *testing.T) {
	srv := testsupport.StartServer(t, "rate_limit = 0.001", "rate_burst = 3", "worker_rate_limit = 0.001", "worker_rate_burst = 3")
	ctx := context.Background()
	admin := srv.Client()
	facts := hostFacts("bookworm")
	w := enroll(t, srv, "h1", nil, facts)
	greedy, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "greedy"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	get := func(token string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/v1/jobs", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 3 {
		if resp := get(greedy.Token); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d within the burst: %s", i, resp.Status)
		}
	}
	resp := get(greedy.Token)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("request past the burst: %s, want 429", resp.Status)
	}
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Fatalf("Retry-After %q: want whole seconds >= 1", resp.Header.Get("Retry-After"))
	}
	if _, err := srv.ClientWith(greedy.Token).ListJobs(ctx); !errors.Is(err, api.ErrRateLimited) {
		// Retry-After is far beyond what the client waits for.
		t.Fatalf("client over its limit: %v, want ErrRateLimited", err)
	}
	if resp := get(other.Token); resp.StatusCode != http.StatusOK {
		t.Fatalf("another client token: %s", resp.Status)
	}
	if _, err := w.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts}); err != nil {
		t.Fatalf("worker heartbeat while a client is limited: %v", err)
	}
	for range 5 {
		if _, err := admin.ListJobs(ctx); err != nil {
			t.Fatalf("the admin token is not limited: %v", err)
		}
	}
}

// TestRateLimitRetried: against a real server, a client token over its
// limit waits out Retry-After and gets its answer; the server counted the
// 429 it sent.
func TestRateLimitRetried(t *testing.T) {
	srv := testsupport.StartServer(t, "rate_limit = 1.0", "rate_burst = 1")
	ctx := context.Background()
	ct, err := srv.Client().CreateClientToken(ctx, api.ClientTokenRequest{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	c := srv.ClientWith(ct.Token)
	for i := range 3 {
		if _, err := c.ListJobs(ctx); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^kiln_rate_limited_total (\d+)`).FindSubmatch(b)
	if m == nil || string(m[1]) == "0" {
		t.Fatalf("no 429 counted: %s", m)
	}
}

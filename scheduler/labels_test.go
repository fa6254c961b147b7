package scheduler_test

import (
	"context"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestEnrollLabels: `kiln worker enroll --labels` merges its labels with
// the enrollment token's; on a conflict the token's value wins and the CLI
// warns. Driven through the real CLI against a real server, where a token
// without labels used to make the server panic (nil map).
func TestEnrollLabels(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	for _, tc := range []struct {
		name       string
		token      string // --labels of `kiln host token create`
		enroll     string // --labels of `kiln worker enroll`
		want       map[string]string
		wantWarned string // a line of the warning, "" for none
	}{
		{"none", "", "", map[string]string{}, ""},
		{"token only", "disk=ssd", "", map[string]string{"disk": "ssd"}, ""},
		{"enroll only", "", "disk=ssd", map[string]string{"disk": "ssd"}, ""},
		{"both", "disk=ssd", "zone=b", map[string]string{"disk": "ssd", "zone": "b"}, ""},
		{"same value", "disk=ssd", "disk=ssd", map[string]string{"disk": "ssd"}, ""},
		{"conflict", "disk=ssd,zone=a", "disk=hdd,rack=3", map[string]string{"disk": "ssd", "zone": "a", "rack": "3"},
			"label disk=hdd of --labels refused: the enrollment token sets disk=ssd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testsupport.NewHost(t, srv.Bin, filepath.Join(t.TempDir(), "no-containerd.sock"), "")
			args := []string{"host", "token", "create"}
			if tc.token != "" {
				args = append(args, "--labels", tc.token)
			}
			out, errOut, code := srv.Run(args...)
			if code != 0 {
				t.Fatalf("host token create: exit %d: %s", code, errOut)
			}
			name := "h-" + strings.ReplaceAll(tc.name, " ", "-")
			args = []string{"worker", "enroll", "--server", srv.URL, "--token", strings.TrimSpace(out), "--name", name}
			if tc.enroll != "" {
				args = append(args, "--labels", tc.enroll)
			}
			_, errOut, code = h.Kiln(t, args...)
			if code != 0 {
				t.Fatalf("worker enroll: exit %d: %s\nserver log:\n%s", code, errOut, srv.Log())
			}
			if tc.wantWarned == "" && strings.Contains(errOut, "warning") {
				t.Errorf("unexpected warning: %s", errOut)
			}
			if tc.wantWarned != "" && !strings.Contains(errOut, tc.wantWarned) {
				t.Errorf("stderr %q lacks the warning %q", errOut, tc.wantWarned)
			}
			hs, err := admin.ListHosts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			for _, hh := range hs {
				if hh.Name == name {
					got = hh.Labels
				}
			}
			if got == nil {
				got = map[string]string{}
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("server labels %v, want %v", got, tc.want)
			}
			cfg, err := config.LoadHost(h.ConfigPath, true)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(cfg.Server.Labels, tc.want) && !(len(cfg.Server.Labels) == 0 && len(tc.want) == 0) {
				t.Errorf("worker.toml labels %v, want %v", cfg.Server.Labels, tc.want)
			}
		})
	}
}

// TestReportedLabelsDoNotMatch: labels a worker reports itself (in lease
// and heartbeat facts) are informational; only enrolled labels count, so a
// host claiming trusted=yes gets no job that requires it.
func TestReportedLabelsDoNotMatch(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	addJob(t, admin, "name = \"secret\"\nimage = \"bookworm\"\nscript = \"true\"\n[constraints]\nlabels = { trusted = \"yes\" }\n")
	if _, err := admin.ExecuteJobWith(ctx, "secret", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	claims := hostFacts("bookworm")
	claims.Labels = map[string]string{"trusted": "yes"}
	// Enrolled honestly; the claim comes later, in its heartbeats and
	// lease requests.
	rogue := enroll(t, srv, "rogue", map[string]string{"zone": "a"}, hostFacts("bookworm"))
	if _, err := rogue.Heartbeat(ctx, api.HeartbeatRequest{Facts: claims}); err != nil {
		t.Fatal(err)
	}
	if a, err := rogue.Lease(ctx, api.LeaseRequest{Facts: claims, Wait: api.Duration(300 * time.Millisecond)}); err != nil || a != nil {
		t.Fatalf("a host claiming trusted=yes got a run: %+v %v", a, err)
	}
	hs, err := admin.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || !maps.Equal(hs[0].Labels, map[string]string{"zone": "a"}) {
		t.Fatalf("host labels changed by reported facts: %+v", hs)
	}
	trusted := enroll(t, srv, "trusted", map[string]string{"trusted": "yes"}, hostFacts("bookworm"))
	if a := mustLease(t, trusted, hostFacts("bookworm"), 5*time.Second); a.Job.Name != "secret" {
		t.Fatalf("leased %s, want secret", a.Job.Name)
	}
}

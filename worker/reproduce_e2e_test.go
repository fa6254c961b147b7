//go:build linux

package worker_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// waitGroup polls a reproduce group until its verdict is in.
func (cl *cluster) waitGroup(t *testing.T, id string, d time.Duration) *api.Group {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		g, err := cl.client().GetGroup(context.Background(), id)
		if err == nil && g.Verdict != nil {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %s: no verdict in %s; last %+v, err %v\nserver log:\n%s", id, d, g, err, tail(cl.srv.Log()))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitHeartbeats waits until every named host has sent a heartbeat. A
// worker reaps every kiln container it does not hold before its first
// heartbeat, and the workers of a test share one containerd: a run
// started by one worker before another finished starting would be reaped.
func (cl *cluster) waitHeartbeats(t *testing.T, names ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		hosts, err := cl.client().ListHosts(context.Background())
		ready := 0
		for _, h := range hosts {
			for _, n := range names {
				if h.Name == n && h.LastSeen.After(h.Created) {
					ready++
				}
			}
		}
		if err == nil && ready == len(names) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts %v: no heartbeat within a minute (%d ready, err %v)", names, ready, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cl *cluster) artifact(t *testing.T, r *api.Run, path string) string {
	t.Helper()
	for _, a := range r.Artifacts {
		if a.Path == path {
			var b strings.Builder
			if err := cl.client().DownloadBlob(context.Background(), a.SHA256, &b); err != nil {
				t.Fatal(err)
			}
			return b.String()
		}
	}
	t.Fatalf("run %s has no artifact %s: %+v", r.ID, path, r.Artifacts)
	return ""
}

// TestReproduceGroups runs groups of two on two real workers: a
// deterministic job is reproducible and lands on both hosts; a job that
// records its environment is not, names the differing files, and shows
// that each variation (uid, TZ, cwd, umask, hostname) really applied.
func TestReproduceGroups(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	w1 := cl.addWorker(t, "twin-a", "", "", "busybox")
	w2 := cl.addWorker(t, "twin-b", "", "", "busybox")
	det := cl.addJob(t, `name = "deterministic"
image = "busybox"
reproduce = 2
script = "set -e; echo fixed $SOURCE_DATE_EPOCH > /out/a.txt"
`)
	env := cl.addJob(t, `name = "environment"
image = "busybox"
script = """
set -e
id -u > /out/uid
echo "$TZ" > /out/tz
echo "$LANG" > /out/lang
pwd > /out/pwd
umask > /out/umask
hostname > /out/hostname
echo "$SOURCE_DATE_EPOCH" > /out/epoch
echo "$HOME" > /out/home
touch /work/scratch
"""
[env]
TZ = "America/New_York"
`)
	cl.waitHeartbeats(t, w1.name, w2.name)
	ctx := context.Background()
	detGroup, envGroup := cl.executeTwins(t, det), cl.executeTwins(t, env)

	dg := cl.waitGroup(t, detGroup, 3*time.Minute)
	eg := cl.waitGroup(t, envGroup, 3*time.Minute)
	for _, g := range []*api.Group{dg, eg} {
		hosts := map[string]bool{}
		for _, m := range g.Members {
			if m.State != api.StateSucceeded {
				t.Fatalf("group %s member %s: %s %s\nconsole:\n%s", g.ID, m.ID, m.State, m.Error, cl.console(t, m.ID))
			}
			hosts[m.Host] = true
		}
		if !hosts[w1.name] || !hosts[w2.name] || g.Verdict.SameHost {
			t.Fatalf("group %s ran on %v, want both %s and %s", g.ID, hosts, w1.name, w2.name)
		}
	}
	if !dg.Verdict.Reproducible {
		t.Fatalf("deterministic job: %+v", dg.Verdict)
	}
	if eg.Verdict.Reproducible {
		t.Fatalf("environment job judged reproducible: %+v", eg.Verdict)
	}
	differs := strings.Join(eg.Verdict.Differs, ",")
	for _, p := range []string{"uid", "tz", "lang", "pwd", "umask", "hostname", "home"} {
		if !strings.Contains(","+differs+",", ","+p+",") {
			t.Errorf("differing paths %v lack %s", eg.Verdict.Differs, p)
		}
	}
	if strings.Contains(differs, "epoch") {
		t.Errorf("SOURCE_DATE_EPOCH differs between members: %v", eg.Verdict.Differs)
	}
	base, varied := &eg.Members[0], &eg.Members[1]
	tests := []struct{ path, base, varied string }{
		{"uid", "0\n", "1000\n"},
		{"tz", "UTC\n", "Etc/GMT-14\n"}, // the variation wins over the job's env
		{"lang", "C.UTF-8\n", "fr_CH.UTF-8\n"},
		{"pwd", "/work\n", "/work/build-b\n"},
		{"umask", "0022\n", "0002\n"},
		{"hostname", base.ID + "\n", varied.ID + "\n"},
		{"home", "/root\n", "/home/kiln-b\n"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := cl.artifact(t, base, tt.path); got != tt.base {
				t.Errorf("member 0 %s = %q, want %q", tt.path, got, tt.base)
			}
			if got := cl.artifact(t, varied, tt.path); got != tt.varied {
				t.Errorf("member 1 %s = %q, want %q", tt.path, got, tt.varied)
			}
		})
	}
	if varied.HostFacts == nil || varied.HostFacts.Details["kernel"] == "" || varied.Snapshot == "" {
		t.Errorf("member keeps no host details or snapshot: facts %+v snapshot %q", varied.HostFacts, varied.Snapshot)
	}

	t.Run("compare runs of different jobs", func(t *testing.T) {
		out, errOut, code := cl.srv.Run("run", "compare", dg.Members[0].ID, base.ID, "--output", "json")
		if code != 0 {
			t.Fatalf("compare: %d %s", code, errOut)
		}
		var c api.Comparison
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatal(err)
		}
		st := map[string]string{}
		for _, d := range c.Artifacts {
			st[d.Path] = d.Status
		}
		if st["a.txt"] != api.ArtifactOnlyA || st["uid"] != api.ArtifactOnlyB || c.Identical {
			t.Fatalf("comparison: %+v", c)
		}
		jobDiff := false
		for _, d := range c.Other {
			jobDiff = jobDiff || (d.Key == "job" && d.A == det && d.B == env)
		}
		if !jobDiff {
			t.Fatalf("comparison does not show the jobs differ: %+v", c.Other)
		}
		text, _, code := cl.srv.Run("run", "compare", dg.Members[0].ID, base.ID)
		if code != 0 || !strings.Contains(text, "only-a") {
			t.Fatalf("compare text: %d\n%s", code, text)
		}
	})

	t.Run("find", func(t *testing.T) {
		sha := dg.Members[0].Artifacts[0].SHA256
		refs, err := cl.client().FindArtifacts(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, r := range refs {
			got[r.Run] = true
		}
		if len(refs) != 2 || !got[dg.Members[0].ID] || !got[dg.Members[1].ID] {
			t.Fatalf("find %s: %+v", sha, refs)
		}
	})
	cl.assertNoLeftovers(t, w1, w2)
}

// executeTwins runs job as a group of two twin runs and returns the group.
func (cl *cluster) executeTwins(t *testing.T, job string) string {
	t.Helper()
	r, err := cl.client().ExecuteJobWith(context.Background(), job, api.ExecuteRequest{Reproduce: 2})
	if err != nil || r.Group == "" {
		t.Fatalf("execute %s: %+v %v", job, r, err)
	}
	return r.Group
}

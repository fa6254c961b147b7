package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestRunnerKey(t *testing.T) {
	tests := []struct {
		name             string
		identity, server string
		want             string
	}{
		{"no identity", "", "", "7"},
		{"exec", "0123456789abcdef", "", "01234567-7"},
		{"worker", "0123456789abcdef", "fedcba9876543210", "01234567-fedcba98-7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Runner{Identity: tc.identity, Server: tc.server}
			if got := r.Key("7"); got != tc.want {
				t.Fatalf("Key = %q, want %q", got, tc.want)
			}
		})
	}
}

// Reap of a data dir's runner: keep protects runs of its own server only;
// runs of another server the data dir served are leftovers; clones and
// sandboxes of another data dir are never touched, held or not.
func TestReapOnlyOwnIdentity(t *testing.T) {
	r, st := newFakeRunner(t, nil)
	r.Identity, r.Server = "aaaaaaaa00000000", "5e5e5e5e00000000"
	ctx := context.Background()
	ownKept := r.Key("1")                    // leased from this server: kept
	ownDead := r.Key("2")                    // this server's, not kept
	oldServer := "aaaaaaaa-0d0d0d0d-1"       // same data dir, server A of before
	foreign := "bbbbbbbb-5e5e5e5e-1"         // another data dir, same server
	foreignExec := "bbbbbbbb-x-0123456789ab" // another data dir's exec
	legacy := "9"                            // no identity: not provably ours
	all := []string{ownKept, ownDead, oldServer, foreign, foreignExec, legacy}
	for _, id := range all {
		if _, err := st.Clone(ctx, "i@1", id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{ownKept, ownDead, oldServer} {
		if err := os.MkdirAll(filepath.Join(r.RunsDir, id), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var asked, reaped []string
	r.Launcher = &fakeLauncher{reap: func(ctx context.Context, keep func(string) bool) error {
		for _, id := range all {
			if !keep(id) {
				reaped = append(reaped, id)
			}
		}
		return nil
	}}
	if err := r.Reap(ctx, func(run string) bool { asked = append(asked, run); return run == "1" }); err != nil {
		t.Fatal(err)
	}
	want := []string{oldServer, ownDead}
	if slices.Sort(reaped); !slices.Equal(reaped, want) {
		t.Errorf("sandboxes reaped %v, want %v", reaped, want)
	}
	for _, run := range asked {
		if run != "1" && run != "2" {
			t.Errorf("keep asked about %q, not a run of this server", run)
		}
	}
	var left []string
	for id := range st.m {
		left = append(left, id)
	}
	wantLeft := []string{ownKept, foreign, foreignExec, legacy}
	if slices.Sort(left); !slices.Equal(left, slices.Sorted(slices.Values(wantLeft))) {
		t.Errorf("clones left %v, want %v", left, wantLeft)
	}
	for _, id := range []string{ownDead, oldServer} {
		if _, err := os.Stat(filepath.Join(r.RunsDir, id)); err == nil {
			t.Errorf("run dir %s kept", id)
		}
	}
	if _, err := os.Stat(filepath.Join(r.RunsDir, ownKept)); err != nil {
		t.Errorf("kept run dir removed: %v", err)
	}
}

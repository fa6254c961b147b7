package scheduler

import (
	"testing"

	"github.com/kiln-build/kiln/api"
)

func TestDiffoscopeTaskPair(t *testing.T) {
	art := func(p, sha string) api.Artifact { return api.Artifact{Path: p, SHA256: sha} }
	run := func(id, state string, arts ...api.Artifact) api.Run {
		return api.Run{ID: id, State: state, Artifacts: arts}
	}
	ok, failed := api.StateSucceeded, api.StateFailed
	tests := []struct {
		name    string
		members []api.Run
		a, b    string // "" for no task
		paths   []string
	}{
		{"two differ", []api.Run{run("1", ok, art("x", "s1"), art("y", "s")), run("2", ok, art("x", "s2"), art("y", "s"))}, "1", "2", []string{"x"}},
		{"baseline failed", []api.Run{run("1", failed), run("2", ok, art("x", "s1")), run("3", ok, art("x", "s2"))}, "2", "3", []string{"x"}},
		{"first other is the same", []api.Run{run("1", ok, art("x", "s1")), run("2", ok, art("x", "s1")), run("3", ok, art("x", "s3"), art("z", "s"))}, "1", "3", []string{"x", "z"}},
		{"only in the baseline", []api.Run{run("1", ok, art("x", "s1")), run("2", ok)}, "1", "2", []string{"x"}},
		{"one succeeded", []api.Run{run("1", ok, art("x", "s1")), run("2", failed, art("x", "s2"))}, "", "", nil},
		{"all the same", []api.Run{run("1", ok, art("x", "s1")), run("2", ok, art("x", "s1"))}, "", "", nil},
		{"none succeeded", []api.Run{run("1", failed), run("2", failed)}, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task := diffoscopeTask(7, tt.members)
			if tt.a == "" {
				if task != nil {
					t.Fatalf("task %+v, want none", task)
				}
				return
			}
			if task == nil || task.Group != "7" || task.RunA != tt.a || task.RunB != tt.b || len(task.Files) != len(tt.paths) {
				t.Fatalf("task %+v, want %s vs %s on %v", task, tt.a, tt.b, tt.paths)
			}
			for i, f := range task.Files {
				if f.Path != tt.paths[i] || f.Status == api.ArtifactSame {
					t.Errorf("file %d: %+v, want path %s, not same", i, f, tt.paths[i])
				}
			}
		})
	}
}

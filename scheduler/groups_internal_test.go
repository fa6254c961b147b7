package scheduler

import (
	"slices"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

func TestGroupVerdict(t *testing.T) {
	art := func(p, sha string) api.Artifact { return api.Artifact{Path: p, SHA256: sha} }
	run := func(id, host, state string, arts ...api.Artifact) api.Run {
		return api.Run{ID: id, Host: host, State: state, Artifacts: arts}
	}
	ok := api.StateSucceeded
	tests := []struct {
		name         string
		members      []api.Run
		reproducible bool
		sameHost     bool
		differs      []string
		missing      []string
		failed       []string
	}{
		{"identical", []api.Run{run("1", "a", ok, art("x", "s1")), run("2", "b", ok, art("x", "s1"))}, true, false, nil, nil, nil},
		{"differs", []api.Run{run("1", "a", ok, art("x", "s1"), art("y", "s")), run("2", "b", ok, art("x", "s2"), art("y", "s"))}, false, false, []string{"x"}, nil, nil},
		{"missing", []api.Run{run("1", "a", ok, art("x", "s1")), run("2", "b", ok)}, false, false, nil, []string{"x"}, nil},
		{"failed member", []api.Run{run("1", "a", ok), run("2", "b", api.StateFailed)}, false, false, nil, nil, []string{"2"}},
		{"same host", []api.Run{run("1", "a", ok), run("2", "a", ok), run("3", "b", ok)}, true, true, nil, nil, nil},
		{"no artifacts at all", []api.Run{run("1", "a", ok), run("2", "b", ok)}, true, false, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := groupVerdict(tt.members, time.Unix(1, 0))
			var missing []string
			for _, m := range v.Missing {
				missing = append(missing, m.Path)
			}
			if v.Reproducible != tt.reproducible || v.SameHost != tt.sameHost || !slices.Equal(v.Differs, tt.differs) ||
				!slices.Equal(missing, tt.missing) || !slices.Equal(v.Failed, tt.failed) {
				t.Fatalf("verdict %+v", v)
			}
		})
	}
}

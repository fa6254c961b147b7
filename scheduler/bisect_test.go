package scheduler

import (
	"slices"
	"testing"
)

// runBisect drives bisectNext with oracle as the pairs' results, as a
// driver would, and returns the outcome and the sets it tried.
func runBisect(t *testing.T, names []string, oracle func(varied []string) bool) (*bisectOutcome, [][]string) {
	t.Helper()
	known := map[string]bool{}
	var tried [][]string
	for range maxBisectTrials + 2 {
		next, out := bisectNext(names, known)
		if out != nil {
			return out, tried
		}
		if _, dup := known[bisectKey(next)]; dup {
			t.Fatalf("asked for %v twice", next)
		}
		tried = append(tried, next)
		known[bisectKey(next)] = oracle(next)
	}
	t.Fatalf("no outcome after %d trials: %v", len(tried), tried)
	return nil, nil
}

// TestBisect: the search names the variation (or the set) that makes the
// pair differ, says when the hosts differ with nothing varied, gives up
// when nothing differs any more, and stays within its bound.
func TestBisect(t *testing.T) {
	names := []string{"timezone", "locale", "umask", "user", "build_path", "hostname", "cpus",
		"domain", "home", "shell", "aslr", "kernel", "user_group", "time"}
	needs := func(culprits ...string) func([]string) bool {
		return func(v []string) bool {
			for _, c := range culprits {
				if !slices.Contains(v, c) {
					return false
				}
			}
			return true
		}
	}
	tests := []struct {
		name      string
		oracle    func([]string) bool
		want      []string
		hosts     bool
		inconcl   bool
		maxTrials int
	}{
		{"time alone", needs("time"), []string{"time"}, false, false, 7},
		{"timezone alone (first)", needs("timezone"), []string{"timezone"}, false, false, 7},
		{"shell alone", needs("shell"), []string{"shell"}, false, false, 7},
		{"two together", needs("locale", "time"), []string{"locale", "time"}, false, false, 12},
		{"either of two: the earlier is enough", func(v []string) bool {
			return slices.Contains(v, "umask") || slices.Contains(v, "kernel")
		}, []string{"umask"}, false, false, 8},
		{"hosts differ", func([]string) bool { return true }, nil, true, false, 1},
		{"flaky: all no longer differs", func([]string) bool { return false }, nil, false, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, tried := runBisect(t, names, tt.oracle)
			if !slices.Equal(out.Culprits, tt.want) || out.HostsDiffer != tt.hosts || out.Inconclusive != tt.inconcl {
				t.Fatalf("outcome %+v, want culprits %v hosts %v inconclusive %v (tried %v)", out, tt.want, tt.hosts, tt.inconcl, tried)
			}
			if len(tried) > tt.maxTrials {
				t.Fatalf("%d trials, want at most %d: %v", len(tried), tt.maxTrials, tried)
			}
			if len(tried[0]) != 0 {
				t.Fatalf("first trial %v, want nothing varied", tried[0])
			}
		})
	}
}

// TestBisectBounded: a culprit set of every variation stops at the bound,
// inconclusive, rather than trying on.
func TestBisectBounded(t *testing.T) {
	var names []string
	for i := range 14 {
		names = append(names, string(rune('a'+i)))
	}
	out, tried := runBisect(t, names, func(v []string) bool { return len(v) == len(names) })
	if len(tried) > maxBisectTrials {
		t.Fatalf("%d trials, bound %d", len(tried), maxBisectTrials)
	}
	if !out.Inconclusive {
		t.Fatalf("outcome %+v after %d trials, want inconclusive at the bound", out, len(tried))
	}
}

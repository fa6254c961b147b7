package api

import (
	"fmt"
	"maps"
	"slices"
)

// Artifact comparison outcomes (ArtifactDiff.Status).
const (
	ArtifactSame    = "same"
	ArtifactDiffers = "differs"
	ArtifactOnlyA   = "only-a"
	ArtifactOnlyB   = "only-b"
)

// ArtifactDiff is one path of two runs' artifacts.
type ArtifactDiff struct {
	Path    string `json:"path"`
	Status  string `json:"status"` // same | differs | only-a | only-b
	SHA256A string `json:"sha256_a,omitempty"`
	SHA256B string `json:"sha256_b,omitempty"`
}

// ValueDiff is one key whose value differs between two runs ("" where
// one run lacks the key).
type ValueDiff struct {
	Key string `json:"key"`
	A   string `json:"a"`
	B   string `json:"b"`
}

// Comparison sets two runs side by side (kiln run compare).
type Comparison struct {
	RunA RunSummary `json:"a"`
	RunB RunSummary `json:"b"`
	// Artifacts are all paths of both runs, sorted.
	Artifacts []ArtifactDiff `json:"artifacts"`
	// Identical: the same artifact paths with the same content each.
	Identical  bool        `json:"identical_artifacts"`
	Variations []ValueDiff `json:"variations,omitempty"`
	HostFacts  []ValueDiff `json:"host_facts,omitempty"` // differing only
	Other      []ValueDiff `json:"other,omitempty"`      // job, revision, snapshot, state, exit
}

// RunSummary is what a comparison says about each run.
type RunSummary struct {
	ID       string `json:"id"`
	Job      string `json:"job"`
	Revision int    `json:"revision"`
	State    string `json:"state"`
	Exit     string `json:"exit"`
	Host     string `json:"host,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Group    string `json:"group,omitempty"`
}

// CompareArtifacts matches two artifact lists by path and sha256.
func CompareArtifacts(a, b []Artifact) (diffs []ArtifactDiff, identical bool) {
	ma, mb := map[string]string{}, map[string]string{}
	for _, x := range a {
		ma[x.Path] = x.SHA256
	}
	for _, x := range b {
		mb[x.Path] = x.SHA256
	}
	paths := slices.Sorted(maps.Keys(ma))
	for p := range mb {
		if _, ok := ma[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	identical = true
	for _, p := range paths {
		sa, inA := ma[p]
		sb, inB := mb[p]
		d := ArtifactDiff{Path: p, SHA256A: sa, SHA256B: sb}
		switch {
		case !inB:
			d.Status = ArtifactOnlyA
		case !inA:
			d.Status = ArtifactOnlyB
		case sa == sb:
			d.Status = ArtifactSame
		default:
			d.Status = ArtifactDiffers
		}
		identical = identical && d.Status == ArtifactSame
		diffs = append(diffs, d)
	}
	return diffs, identical
}

// diffMaps returns the keys whose values differ, sorted; with all set it
// returns equal keys too.
func diffMaps(a, b map[string]string, all bool) []ValueDiff {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var out []ValueDiff
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if all || a[k] != b[k] {
			out = append(out, ValueDiff{Key: k, A: a[k], B: b[k]})
		}
	}
	return out
}

// ExitText is the run's end as one word or number: its signal, "timeout",
// its exit code, or "-" while it has none.
func (r *Run) ExitText() string {
	switch {
	case r.Signal != "":
		return r.Signal
	case r.TimedOut:
		return "timeout"
	case r.ExitCode != nil:
		return fmt.Sprint(*r.ExitCode)
	}
	return "-"
}

func summary(r *Run) RunSummary {
	return RunSummary{ID: r.ID, Job: r.Job, Revision: r.Revision, State: r.State, Exit: r.ExitText(), Host: r.Host, Snapshot: r.Snapshot, Group: r.Group}
}

// factsMap flattens the comparable part of host facts.
func factsMap(f *Facts) map[string]string {
	m := map[string]string{}
	if f == nil {
		return m
	}
	for k, v := range f.Details {
		m[k] = v
	}
	m["os"], m["arch"] = f.OS, f.Arch
	return m
}

// CompareRuns compares two runs of any jobs: artifacts (by path and
// sha256), variations (all keys), host facts (differing keys only), and
// job, revision, snapshot, host, state and exit (differing only).
func CompareRuns(a, b *Run) Comparison {
	c := Comparison{RunA: summary(a), RunB: summary(b)}
	c.Artifacts, c.Identical = CompareArtifacts(a.Artifacts, b.Artifacts)
	c.Variations = diffMaps(a.Variations, b.Variations, true)
	c.HostFacts = diffMaps(factsMap(a.HostFacts), factsMap(b.HostFacts), false)
	sa, sb := c.RunA, c.RunB
	c.Other = diffMaps(
		map[string]string{"job": sa.Job, "revision": fmt.Sprint(sa.Revision), "snapshot": sa.Snapshot, "host": sa.Host, "state": sa.State, "exit": sa.Exit},
		map[string]string{"job": sb.Job, "revision": fmt.Sprint(sb.Revision), "snapshot": sb.Snapshot, "host": sb.Host, "state": sb.State, "exit": sb.Exit},
		false)
	return c
}

// ValidSHA256 reports whether s is a sha256 as the API writes it: 64
// lowercase hex digits.
func ValidSHA256(s string) bool { return sha256Re.MatchString(s) }

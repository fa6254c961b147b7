package api

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/kiln-build/kiln/names"
)

// Jobs that build on jobs (issue 30): a job's [[needs]] and on, the run
// states they add, and the artifacts of needed runs an assignment carries.

// Bounds of a job's dependencies, so that a job file cannot make the
// server walk, store or send without bound.
const (
	// MaxNeeds bounds a job's [[needs]] entries.
	MaxNeeds = 32
	// MaxNeedGlobs bounds one need's artifacts globs.
	MaxNeedGlobs = 32
	// MaxTriggers bounds a job's on list.
	MaxTriggers = 16
	// MaxGraph bounds the jobs one execute walks through needs (the job
	// and everything it needs, directly or not).
	MaxGraph = 256
	// MaxNeededArtifacts bounds the needed runs' artifacts one assignment
	// places under /in/needs.
	MaxNeededArtifacts = 10000
)

// NeedsDir is the directory under /in where the artifacts of needed runs
// appear: /in/needs/<job>/<path>.
const NeedsDir = "needs"

// Run states of runs that are part of a graph.
const (
	// StateDepWait: the run waits for the runs it needs to succeed
	// (Run.Waiting names them); it joins the queue when they have.
	StateDepWait = "dep-wait"
	// StateSkipped: a run it needs failed or was cancelled, so it never
	// ran (Run.Error names that run). Terminal.
	StateSkipped = "skipped"
)

// Trigger kinds of a job's on list: "success:JOB" and "image:NAME".
const (
	TriggerSuccess = "success"
	TriggerImage   = "image"
)

// Need is one [[needs]] entry of a job file: the job needed, and globs
// over the paths of its run's artifacts (none: all of them).
type Need struct {
	Job       string   `toml:"job" json:"job"`
	Artifacts []string `toml:"artifacts,omitempty" json:"artifacts,omitempty"`
}

// Matches reports whether artifact path p of the needed run is one the
// need takes. A glob with a '/' matches the whole path (path.Match: '*'
// stops at '/'); one without matches the whole path or its last element,
// so that "*.deb" takes pool/main/x.deb too.
func (n Need) Matches(p string) bool {
	if len(n.Artifacts) == 0 {
		return true
	}
	for _, g := range n.Artifacts {
		if ok, _ := path.Match(g, p); ok {
			return true
		}
		if !strings.Contains(g, "/") {
			if ok, _ := path.Match(g, path.Base(p)); ok {
				return true
			}
		}
	}
	return false
}

// Trigger splits an on entry into its kind and name.
func Trigger(on string) (kind, name string, ok bool) {
	kind, name, ok = strings.Cut(on, ":")
	return kind, name, ok
}

// validateNeeds checks [[needs]] and on (part of Validate). A cycle
// through other jobs is the server's to find (it has them); a job that
// needs itself is refused here.
func (j *Job) validateNeeds() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidJob}, a...)...)
	}
	if len(j.Needs) > MaxNeeds {
		return bad("needs: %d entries; at most %d are allowed", len(j.Needs), MaxNeeds)
	}
	if len(j.Needs) > 0 && j.Reproduce > 0 {
		return bad("needs with reproduce: a job with needs runs no reproduce group")
	}
	seen := map[string]bool{}
	for _, n := range j.Needs {
		switch {
		case n.Job == "":
			return bad("needs: an entry without job")
		case !names.Valid(n.Job):
			return bad("needs job %.80q is not a valid job name", n.Job)
		case n.Job == j.Name:
			return bad("needs: cycle %s -> %s (a job cannot need itself)", j.Name, j.Name)
		case seen[n.Job]:
			return bad("needs job %q given twice", n.Job)
		case len(n.Artifacts) > MaxNeedGlobs:
			return bad("needs job %q: %d artifacts globs; at most %d are allowed", n.Job, len(n.Artifacts), MaxNeedGlobs)
		}
		seen[n.Job] = true
		for _, g := range n.Artifacts {
			if _, err := path.Match(g, ""); err != nil || g == "" || len(g) > 256 || path.IsAbs(g) || names.HasDotDot(g) {
				return bad("needs job %q: artifacts glob %.80q: want a relative pattern over the needed run's artifact paths", n.Job, g)
			}
		}
	}
	if len(j.Needs) > 0 {
		// The needed runs' artifacts go to /in/needs: an input of the
		// job's own must not be placed there.
		for _, in := range j.Inputs {
			if in.Path == NeedsDir || strings.HasPrefix(in.Path, NeedsDir+"/") {
				return bad("inputs path %q: /in/%s is where the needed runs' artifacts go", in.Path, NeedsDir)
			}
		}
	}
	if len(j.On) > MaxTriggers {
		return bad("on: %d entries; at most %d are allowed", len(j.On), MaxTriggers)
	}
	for i, on := range j.On {
		kind, name, ok := Trigger(on)
		switch {
		case !ok || (kind != TriggerSuccess && kind != TriggerImage):
			return bad("on %.80q: want \"success:JOB\" or \"image:NAME\"", on)
		case !names.Valid(name):
			return bad("on %.80q: %.80q is not a valid name", on, name)
		case kind == TriggerSuccess && name == j.Name:
			return bad("on %q: a job cannot be triggered by its own success (it would run for ever)", on)
		case slices.Contains(j.On[:i], on):
			return bad("on %q given twice", on)
		}
	}
	return nil
}

// NeededArtifact is an artifact of a run the assigned run needs: the
// worker places it read-only at /in/needs/<Job>/<Path>, checked by
// SHA256 like an input.
type NeededArtifact struct {
	Job    string `json:"job"`
	Run    string `json:"run"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// RunNeed is one run a run needs, as GET /v1/runs/{id} shows it.
type RunNeed struct {
	Job   string `json:"job"`
	Run   string `json:"run"`
	State string `json:"state"`
}

// InputsWithNeeds is the job's inputs and the needed runs' artifacts as
// inputs under needs/<job>/, what the worker fetches and places in /in.
// Validate has checked that no two land on one path.
func (a *Assignment) InputsWithNeeds() []Input {
	if len(a.Needs) == 0 {
		return a.Job.Inputs
	}
	out := slices.Clone(a.Job.Inputs)
	for _, n := range a.Needs {
		out = append(out, Input{Path: NeedsDir + "/" + n.Job + "/" + n.Path, SHA256: n.SHA256})
	}
	return out
}

// validateNeeds checks what an assignment says of the needed runs'
// artifacts: a hostile server must not place a file outside
// /in/needs/<job>/, under a job the run does not need, twice on one path,
// or without bound.
func (a *Assignment) validateNeeds() error {
	if len(a.Needs) > MaxNeededArtifacts {
		return fmt.Errorf("%d needed artifacts; at most %d are allowed", len(a.Needs), MaxNeededArtifacts)
	}
	seen := make(map[string]bool, len(a.Needs))
	for _, n := range a.Needs {
		switch {
		case !names.Valid(n.Job):
			return fmt.Errorf("needed artifact of job %.80q: not a valid job name", n.Job)
		case !slices.ContainsFunc(a.Job.Needs, func(x Need) bool { return x.Job == n.Job }):
			return fmt.Errorf("needed artifact of job %q: the job does not need it", n.Job)
		case !ValidRunID(n.Run):
			return fmt.Errorf("needed artifact of job %q: run %.80q: want 1 to 63 of a-z, 0-9 and '-'", n.Job, n.Run)
		case !ValidSHA256(n.SHA256):
			return fmt.Errorf("needed artifact %q of job %q: sha256 %.80q: want 64 lowercase hex digits", n.Path, n.Job, n.SHA256)
		case n.Size < 0:
			return fmt.Errorf("needed artifact %q of job %q: negative size", n.Path, n.Job)
		}
		if err := names.ValidRelPath(n.Path); err != nil {
			return fmt.Errorf("needed artifact %.80q of job %q: %w", n.Path, n.Job, err)
		}
		p := n.Job + "/" + n.Path
		if seen[p] {
			return fmt.Errorf("needed artifact %q of job %q given twice", n.Path, n.Job)
		}
		seen[p] = true
	}
	return nil
}

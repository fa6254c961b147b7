package api

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzAssignmentValidate feeds path-like values into every field a worker
// joins into a path; an assignment that validates never yields a path
// outside the worker's directories (the seed corpus runs with go test).
func FuzzAssignmentValidate(f *testing.F) {
	for _, v := range []string{"5e5e5e5e00000000", "12", "../", "..", "/", "/etc", "a\x00b", "../../etc", strings.Repeat("a", 5000), "a/b", ".", "", "0123456789abcdef0123456789abcdef"} {
		f.Add(v, "12", "0123456789abcdef0123456789abcdef", v, v, v)
		f.Add("5e5e5e5e00000000", v, v, "/work", "1", "x")
		f.Add(v, v, v, v, v, v)
	}
	const data = "/var/lib/kiln"
	inside := func(t *testing.T, root, p string) {
		t.Helper()
		if rel, err := filepath.Rel(root, p); err != nil || rel == "." || !filepath.IsLocal(rel) || strings.ContainsRune(p, 0) {
			t.Fatalf("path %q is not below %s", p, root)
		}
	}
	f.Fuzz(func(t *testing.T, server, run, owner, cwd, group, file string) {
		a := Assignment{ServerID: server, RunID: run, Owner: owner, Fence: "f", Attempt: 1, Group: group,
			Job:        Job{Name: "j", Image: "busybox", Script: "true", Inputs: []Input{{Path: file, SHA256: strings.Repeat("a", 64)}}},
			Variations: map[string]string{VariationCwd: cwd},
			Diffoscope: &DiffoscopeTask{Group: group, RunA: run, RunB: run, Files: []ArtifactDiff{{Path: file}}}}
		if a.Validate() != nil {
			return
		}
		// What the worker joins (worker/leases.go, worker.go, diffoscope.go,
		// sandbox keys, cache trees).
		inside(t, filepath.Join(data, "leases"), filepath.Join(data, "leases", a.ServerID, a.RunID+".json"))
		for _, sub := range []string{"artifacts", "diffoscope"} {
			p := filepath.Join(data, sub, a.ServerID+"-"+a.RunID)
			inside(t, filepath.Join(data, sub), p)
			if filepath.Dir(p) != filepath.Join(data, sub) {
				t.Fatalf("%q is not one name below %s", p, sub)
			}
			inside(t, p, filepath.Join(p, a.Diffoscope.Files[0].Path))
		}
		inside(t, filepath.Join(data, "runs"), filepath.Join(data, "runs", a.ServerID[:8]+"-"+a.RunID))
		if a.Owner != "" {
			inside(t, "/cache/owners", filepath.Join("/cache/owners", a.Owner, "amd64"))
		}
		inside(t, "/in", filepath.Join("/in", a.Job.Inputs[0].Path))
		if c := a.Variations[VariationCwd]; c != "/work" {
			inside(t, "/work", c)
		}
	})
}

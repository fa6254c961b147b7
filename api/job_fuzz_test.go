package api

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/names"
)

// FuzzParseJobFile: any input either parses to a job that validates, or
// fails with an ErrInvalidJob error of one line; it never panics.
func FuzzParseJobFile(f *testing.F) {
	f.Add([]byte("name = \"hello\"\nimage = \"bookworm\"\nscript = \"echo hi\"\n"))
	// The keys a hostile author reaches for: names that become host paths
	// or mount points, and the tier and network it may not pick.
	f.Add([]byte("name = \"t\"\nimage = \"i\"\nscript = \"s\"\nhost_tools = [\"../x\"]\ncaches = [\"/var\"]\nisolation = \"host\"\n"))
	f.Add([]byte("name = \"t\"\nimage = \"i\"\nscript = \"s\"\n[resources]\nnetwork = \"host\"\ndisk = \"1EiB\"\n[constraints]\nlabels = { \"a=b\" = \"c\" }\n"))
	f.Add([]byte("name = \"t\"\nimage = \"i\"\nscript = \"s\"\n[hooks]\npre = [\"../../bin/sh\"]\n[[inputs]]\npath = \"a/./b\"\nsha256 = \"" + strings.Repeat("a", 64) + "\"\n"))
	f.Add([]byte("name = \"t\"\nimage = \"i\"\nscript = \"s\"\n[reproduce]\nruns = 2\nvary = [\"home\", \"cpus\"]\nkeep = [\"shell\"]\n"))
	f.Add([]byte("name = \"t\"\nimage = \"i\"\nscript = \"s\"\n[reproduce]\nruns = -1\nvary = [\"../x\", 3]\nkeep = {a = 1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJobFile(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidJob) {
				t.Fatalf("error does not wrap ErrInvalidJob: %v", err)
			}
			for _, c := range err.Error() {
				if c == '\n' {
					t.Fatalf("error spans lines: %q", err)
				}
			}
			return
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("parsed job does not validate: %v", err)
		}
		for _, in := range j.Inputs {
			if names.ValidRelPath(in.Path) != nil {
				t.Fatalf("input path %q accepted", in.Path)
			}
		}
		// Names that become paths on the host (mount points, cache and
		// tool directories) never carry a separator or "..".
		for _, n := range slices.Concat(j.HostTools, j.Caches, j.Hooks.Pre, j.Hooks.Post, j.Hooks.Cleanup) {
			if strings.ContainsAny(n, "/\\\x00") || n == ".." || n == "." || n == "" {
				t.Fatalf("name %q accepted", n)
			}
		}
		for _, n := range slices.Concat(j.Vary, j.Keep) {
			if !slices.Contains(VariationNames, n) {
				t.Fatalf("variation %q accepted", n)
			}
		}
		switch j.Isolation {
		case "", IsolationContainer, IsolationGVisor, IsolationVM:
		default:
			t.Fatalf("isolation %q accepted", j.Isolation)
		}
	})
}

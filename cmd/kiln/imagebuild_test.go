package main

import (
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
)

// TestBuildRequestArch: `kiln image build -a` takes any spelling of an
// arch that hosts know by kiln's name (x86_64 is amd64), and refuses an
// unknown one before anything is sent, naming it.
func TestBuildRequestArch(t *testing.T) {
	for _, tc := range []struct {
		arch, want, err string
	}{
		{"", "", ""},
		{"amd64", "amd64", ""},
		{"x86_64", "amd64", ""},
		{"aarch64", "arm64", ""},
		{"../arm64", "", `arch "../arm64"`},
		{"vax", "", "unknown architecture"},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			f := buildFlags{b: api.ImageBuild{Method: "busybox", Arch: tc.arch}}
			req, err := f.request("tiny", "")
			switch {
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("arch %q: %v, want an error with %q", tc.arch, err, tc.err)
			case tc.err == "" && err != nil:
				t.Fatalf("arch %q: %v", tc.arch, err)
			case tc.err == "" && req.Build.Arch != tc.want:
				t.Fatalf("arch %q sent as %q, want %q", tc.arch, req.Build.Arch, tc.want)
			}
		})
	}
}

package api

import (
	"errors"
	"strings"
	"testing"
)

// An image build comes from a server the host must not trust: its method,
// version, arch and packages become arguments of the host's image tools.
func TestAssignmentValidateImageBuild(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(j *Job)
		ok     bool
	}{
		{"valid", func(*Job) {}, true},
		{"busybox, nothing else", func(j *Job) { j.ImageBuild = &ImageBuild{Name: "tiny", Method: "busybox"} }, true},
		{"freebsd with a dist set", func(j *Job) { j.ImageBuild.Method, j.ImageBuild.Packages = "freebsd", []string{"lib32"} }, true},
		{"method tar=PATH", func(j *Job) { j.ImageBuild.Method = "tar=/etc/shadow" }, false},
		{"method dir=PATH", func(j *Job) { j.ImageBuild.Method = "dir=/" }, false},
		{"method unknown", func(j *Job) { j.ImageBuild.Method = "lxc" }, false},
		{"no method", func(j *Job) { j.ImageBuild.Method = "" }, false},
		{"version ../x", func(j *Job) { j.ImageBuild.Version = "../x" }, false},
		{"version an option", func(j *Job) { j.ImageBuild.Version = "--variant=x" }, false},
		{"version a short option", func(j *Job) { j.ImageBuild.Version = "-v" }, false},
		{"arch an option", func(j *Job) { j.ImageBuild.Arch = "-x" }, false},
		{"arch a/b", func(j *Job) { j.ImageBuild.Arch = "a/b" }, false},
		{"package an option", func(j *Job) { j.ImageBuild.Packages = []string{"--foreign"} }, false},
		{"package with a comma", func(j *Job) { j.ImageBuild.Packages = []string{"a,b"} }, false},
		{"package with a space", func(j *Job) { j.ImageBuild.Packages = []string{"a b"} }, false},
		{"too many packages", func(j *Job) { j.ImageBuild.Packages = make([]string, 257) }, false},
		{"on a host", func(j *Job) { j.ImageBuild.On = "build-01" }, true},
		{"on ../x", func(j *Job) { j.ImageBuild.On = "../x" }, false},
		{"name ../x", func(j *Job) { j.ImageBuild.Name, j.Name = "../x", "image.../x" }, false},
		{"name too long", func(j *Job) { j.ImageBuild.Name = strings.Repeat("n", 58); j.Name = "image." + j.ImageBuild.Name }, false},
		{"job named otherwise", func(j *Job) { j.Name = "image.other" }, false},
		{"with an image", func(j *Job) { j.Image = "bookworm" }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := Job{Name: "image.tiny", Script: "# build\n", ImageBuild: &ImageBuild{Name: "tiny", Method: "debootstrap",
				Version: "trixie", Arch: "arm64", Packages: []string{"build-essential", "g++", "libc6-dev"}}}
			tt.mutate(&j)
			a := &Assignment{ServerID: "5e5e5e5e00000000", RunID: "12", Fence: "0f1e", Attempt: 1, Job: j}
			err := a.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidAssignment) {
				t.Fatalf("error %v does not wrap ErrInvalidAssignment", err)
			}
		})
	}
}

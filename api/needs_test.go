package api

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestJobNeedsValidate(t *testing.T) {
	sha := strings.Repeat("a", 64)
	for _, tt := range []struct {
		name string
		file string
		ok   bool
	}{
		{"needs all artifacts", `[[needs]]
job = "libfoo"`, true},
		{"needs with globs and triggers", `on = ["success:libfoo", "image:bookworm"]
[[needs]]
job = "libfoo"
artifacts = ["*.deb", "pool/*/x.udeb"]`, true},
		{"needs itself", `[[needs]]
job = "pkg"`, false},
		{"needs twice", `[[needs]]
job = "a"
[[needs]]
job = "a"`, false},
		{"needs no job", `[[needs]]
artifacts = ["*"]`, false},
		{"needs bad name", `[[needs]]
job = "../etc"`, false},
		{"needs unknown key", `[[needs]]
job = "a"
path = "x"`, false},
		{"glob absolute", `[[needs]]
job = "a"
artifacts = ["/etc/*"]`, false},
		{"glob dotdot", `[[needs]]
job = "a"
artifacts = ["../*"]`, false},
		{"glob malformed", `[[needs]]
job = "a"
artifacts = ["[x"]`, false},
		{"too many globs", `[[needs]]
job = "a"
artifacts = [` + strings.Repeat(`"x",`, MaxNeedGlobs+1) + `]`, false},
		{"too many needs", strings.Repeat("[[needs]]\njob = \"a\"\n", 1) + func() string {
			var b strings.Builder
			for i := range MaxNeeds + 1 {
				b.WriteString("[[needs]]\njob = \"j" + strings.Repeat("x", i) + "\"\n")
			}
			return b.String()
		}(), false},
		{"needs with reproduce", "reproduce = 2\n[[needs]]\njob = \"a\"", false},
		{"input under needs", "inputs = [{path = \"needs/a/x\", sha256 = \"" + sha + "\"}]\n[[needs]]\njob = \"a\"", false},
		{"input named needs without needs", "inputs = [{path = \"needs/x\", sha256 = \"" + sha + "\"}]", true},
		{"on unknown kind", `on = ["push:main"]`, false},
		{"on no colon", `on = ["libfoo"]`, false},
		{"on bad name", `on = ["success:../x"]`, false},
		{"on own success", `on = ["success:pkg"]`, false},
		{"on twice", `on = ["image:a", "image:a"]`, false},
		{"on too many", `on = [` + func() string {
			var l []string
			for i := range MaxTriggers + 1 {
				l = append(l, `"image:i`+strings.Repeat("x", i)+`"`)
			}
			return strings.Join(l, ",")
		}() + `]`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Top-level keys first: a [[needs]] table takes what follows.
			head, tables, _ := strings.Cut(tt.file, "[[needs]]")
			file := "name = \"pkg\"\nimage = \"busybox\"\nscript = \"true\"\n" + head
			if tables != "" || strings.Contains(tt.file, "[[needs]]") {
				file += "\n[[needs]]" + tables
			}
			_, err := ParseJobFile([]byte(file))
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidJob) {
				t.Fatalf("accepted (err %v)", err)
			}
		})
	}
}

func TestNeedMatches(t *testing.T) {
	for _, tt := range []struct {
		globs []string
		path  string
		want  bool
	}{
		{nil, "any/thing", true},
		{[]string{"*.deb"}, "foo.deb", true},
		{[]string{"*.deb"}, "pool/main/foo.deb", true},
		{[]string{"*.deb"}, "foo.dsc", false},
		{[]string{"pool/*.deb"}, "pool/foo.deb", true},
		{[]string{"pool/*.deb"}, "pool/main/foo.deb", false},
		{[]string{"a", "b/*"}, "b/c", true},
	} {
		if got := (Need{Job: "x", Artifacts: tt.globs}).Matches(tt.path); got != tt.want {
			t.Errorf("%v matches %q = %v, want %v", tt.globs, tt.path, got, tt.want)
		}
	}
}

// TestAssignmentNeedsValidate: what a hostile server could send of the
// needed runs' artifacts is refused before the worker fetches anything.
func TestAssignmentNeedsValidate(t *testing.T) {
	sha := strings.Repeat("b", 64)
	valid := func() *Assignment {
		return &Assignment{ServerID: "5e5e5e5e00000000", RunID: "12", Fence: "f", Attempt: 1,
			Job:   Job{Name: "pkg", Image: "busybox", Script: "true", Needs: []Need{{Job: "lib"}}},
			Needs: []NeededArtifact{{Job: "lib", Run: "7", Path: "out/lib.a", Size: 3, SHA256: sha}}}
	}
	for _, tt := range []struct {
		name   string
		mutate func(a *Assignment)
		ok     bool
	}{
		{"valid", func(*Assignment) {}, true},
		{"path ../../etc/passwd", func(a *Assignment) { a.Needs[0].Path = "../../etc/passwd" }, false},
		{"path absolute", func(a *Assignment) { a.Needs[0].Path = "/etc/passwd" }, false},
		{"path empty", func(a *Assignment) { a.Needs[0].Path = "" }, false},
		{"path a/../../b", func(a *Assignment) { a.Needs[0].Path = "a/../../b" }, false},
		{"job ..", func(a *Assignment) { a.Needs[0].Job = ".." }, false},
		{"job a/b", func(a *Assignment) { a.Needs[0].Job = "a/b" }, false},
		{"job not needed", func(a *Assignment) { a.Needs[0].Job = "other" }, false},
		{"run ../x", func(a *Assignment) { a.Needs[0].Run = "../x" }, false},
		{"sha256 short", func(a *Assignment) { a.Needs[0].SHA256 = "abc" }, false},
		{"negative size", func(a *Assignment) { a.Needs[0].Size = -1 }, false},
		{"twice", func(a *Assignment) { a.Needs = append(a.Needs, a.Needs[0]) }, false},
		{"too many", func(a *Assignment) {
			a.Needs = make([]NeededArtifact, MaxNeededArtifacts+1)
			for i := range a.Needs {
				a.Needs[i] = NeededArtifact{Job: "lib", Run: "7", Path: "f" + strconv.Itoa(i), SHA256: sha}
			}
		}, false},
		{"job input under needs", func(a *Assignment) { a.Job.Inputs = []Input{{Path: "needs/lib/out/lib.a", SHA256: sha}} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := valid()
			tt.mutate(a)
			err := a.Validate()
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidAssignment) {
				t.Fatalf("accepted (err %v)", err)
			}
		})
	}
	a := valid()
	a.Job.Inputs = []Input{{Path: "src.tar", SHA256: sha}}
	got := a.InputsWithNeeds()
	if len(got) != 2 || got[1].Path != "needs/lib/out/lib.a" || got[1].SHA256 != sha {
		t.Fatalf("InputsWithNeeds = %+v", got)
	}
}

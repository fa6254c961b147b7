package api

import (
	"errors"
	"strings"
	"testing"
)

func TestAssignmentValidate(t *testing.T) {
	valid := func() *Assignment {
		return &Assignment{ServerID: "5e5e5e5e00000000", Owner: strings.Repeat("0f", 16), RunID: "12", Fence: "0f1e", Attempt: 1, Group: "3", Member: 1,
			Job: Job{Name: "j", Image: "busybox", Script: "true"},
			Variations: map[string]string{"SOURCE_DATE_EPOCH": "1700000000", "TZ": "Etc/GMT-14", "LANG": "fr_CH.UTF-8",
				VariationUmask: "002", VariationUser: "1000:1000", VariationCwd: "/work/build-b", VariationHostname: "kiln-12.example"}}
	}
	sha := strings.Repeat("a", 64)
	for _, tt := range []struct {
		name   string
		mutate func(a *Assignment)
		ok     bool
	}{
		{"valid", func(*Assignment) {}, true},
		{"run id x-hex", func(a *Assignment) { a.RunID = "x-0123456789ab" }, true},
		{"run id ..", func(a *Assignment) { a.RunID = ".." }, false},
		{"server id ../../etc", func(a *Assignment) { a.ServerID = "../../etc" }, false},
		{"server id /", func(a *Assignment) { a.ServerID = "/" }, false},
		{"empty server id", func(a *Assignment) { a.ServerID = "" }, false},
		{"server id upper hex", func(a *Assignment) { a.ServerID = "5E5E5E5E00000000" }, false},
		{"server id 17 digits", func(a *Assignment) { a.ServerID = "5e5e5e5e000000000" }, false},
		{"owner ../x", func(a *Assignment) { a.Owner = "../x" }, false},
		{"owner local", func(a *Assignment) { a.Owner = "local" }, false},
		{"no owner (older server)", func(a *Assignment) { a.Owner = "" }, true},
		{"run id ../../..", func(a *Assignment) { a.RunID = "../../.." }, false},
		{"run id a/b", func(a *Assignment) { a.RunID = "a/b" }, false},
		{"empty run id", func(a *Assignment) { a.RunID = "" }, false},
		{"run id -x", func(a *Assignment) { a.RunID = "-x" }, false},
		{"run id upper", func(a *Assignment) { a.RunID = "A1" }, false},
		{"run id 64 long", func(a *Assignment) { a.RunID = strings.Repeat("1", 64) }, false},
		{"empty fence", func(a *Assignment) { a.Fence = "" }, false},
		{"fence with newline", func(a *Assignment) { a.Fence = "a\nb" }, false},
		{"attempt 0", func(a *Assignment) { a.Attempt = 0 }, false},
		{"negative log offset", func(a *Assignment) { a.LogOffset = -1 }, false},
		{"group ../x", func(a *Assignment) { a.Group = "../x" }, false},
		{"job without script", func(a *Assignment) { a.Job.Script = "" }, false},
		{"input sha256 ../../x", func(a *Assignment) { a.Job.Inputs = []Input{{Path: "a", SHA256: "../../x"}} }, false},
		{"input sha256 upper hex", func(a *Assignment) { a.Job.Inputs = []Input{{Path: "a", SHA256: strings.ToUpper(sha)}} }, false},
		{"input path ../a", func(a *Assignment) { a.Job.Inputs = []Input{{Path: "../a", SHA256: sha}} }, false},
		{"input ok", func(a *Assignment) { a.Job.Inputs = []Input{{Path: "src/a.tar", SHA256: sha}} }, true},
		{"cwd /work/../etc", func(a *Assignment) { a.Variations[VariationCwd] = "/work/../etc" }, false},
		{"cwd /etc", func(a *Assignment) { a.Variations[VariationCwd] = "/etc" }, false},
		{"cwd /workx", func(a *Assignment) { a.Variations[VariationCwd] = "/workx" }, false},
		{"cwd /work", func(a *Assignment) { a.Variations[VariationCwd] = "/work" }, true},
		{"hostname 300", func(a *Assignment) { a.Variations[VariationHostname] = strings.Repeat("h", 300) }, false},
		{"hostname 64", func(a *Assignment) { a.Variations[VariationHostname] = strings.Repeat("h", 64) }, false},
		{"hostname 63", func(a *Assignment) { a.Variations[VariationHostname] = strings.Repeat("h", 63) }, true},
		{"hostname -a", func(a *Assignment) { a.Variations[VariationHostname] = "-a" }, false},
		{"hostname a..b", func(a *Assignment) { a.Variations[VariationHostname] = "a..b" }, false},
		{"hostname a/b", func(a *Assignment) { a.Variations[VariationHostname] = "a/b" }, false},
		{"umask 0999", func(a *Assignment) { a.Variations[VariationUmask] = "0999" }, false},
		{"user root", func(a *Assignment) { a.Variations[VariationUser] = "root" }, false},
		{"epoch words", func(a *Assignment) { a.Variations["SOURCE_DATE_EPOCH"] = "now" }, false},
		{"TZ with NUL", func(a *Assignment) { a.Variations["TZ"] = "UTC\x00" }, false},
		{"unknown variation", func(a *Assignment) { a.Variations["LD_PRELOAD"] = "/x.so" }, false},
		{"cpus 2", func(a *Assignment) { a.Variations[VariationCPUs] = "2" }, true},
		{"cpus 0", func(a *Assignment) { a.Variations[VariationCPUs] = "0" }, false},
		{"cpus 02", func(a *Assignment) { a.Variations[VariationCPUs] = "02" }, false},
		{"cpus 0-3", func(a *Assignment) { a.Variations[VariationCPUs] = "0-3" }, false},
		{"domain", func(a *Assignment) { a.Variations[VariationDomain] = "b.example" }, true},
		{"domain a/b", func(a *Assignment) { a.Variations[VariationDomain] = "a/b" }, false},
		{"home", func(a *Assignment) { a.Variations[VariationHome] = "/home/kiln-b" }, true},
		{"home relative", func(a *Assignment) { a.Variations[VariationHome] = "home" }, false},
		{"home /etc", func(a *Assignment) { a.Variations[VariationHome] = "/etc" }, false},
		{"home dotdot", func(a *Assignment) { a.Variations[VariationHome] = "/home/x/../../etc" }, false},
		{"shell bash", func(a *Assignment) { a.Variations[VariationShell] = "bash" }, true},
		{"shell zsh", func(a *Assignment) { a.Variations[VariationShell] = "../zsh" }, false},
		{"aslr off", func(a *Assignment) { a.Variations[VariationASLR] = "off" }, true},
		{"aslr other", func(a *Assignment) { a.Variations[VariationASLR] = "0x400000" }, false},
		{"kernel uname26", func(a *Assignment) { a.Variations[VariationKernel] = "uname26" }, true},
		{"kernel other", func(a *Assignment) { a.Variations[VariationKernel] = "4.19" }, false},
		{"user_group", func(a *Assignment) { a.Variations[VariationUserGroup] = "kiln-b:kiln-b-grp" }, true},
		{"user_group no group", func(a *Assignment) { a.Variations[VariationUserGroup] = "kiln-b" }, false},
		{"user_group passwd line", func(a *Assignment) { a.Variations[VariationUserGroup] = "x:0:0::/:/bin/sh:g" }, false},
		{"user_group newline", func(a *Assignment) { a.Variations[VariationUserGroup] = "a\nroot:g" }, false},
		{"user_group upper", func(a *Assignment) { a.Variations[VariationUserGroup] = "Root:g" }, false},
		{"time +398d", func(a *Assignment) { a.Variations[VariationTime] = "+398d" }, true},
		{"time behind", func(a *Assignment) { a.Variations[VariationTime] = "-398d" }, false},
		{"time absolute", func(a *Assignment) { a.Variations[VariationTime] = "@2000-01-01 00:00:00" }, false},
		{"time seconds", func(a *Assignment) { a.Variations[VariationTime] = "+5" }, false},
		{"time newline", func(a *Assignment) { a.Variations[VariationTime] = "+1d\nx" }, false},
		{"kept", func(a *Assignment) { a.Variations[VariationKept] = "cpus,shell" }, true},
		{"kept new names", func(a *Assignment) { a.Variations[VariationKept] = "aslr,kernel,user_group" }, true},
		{"kept unknown", func(a *Assignment) { a.Variations[VariationKept] = "cpus,moon" }, false},
		{"diffoscope ok", func(a *Assignment) {
			a.Diffoscope = &DiffoscopeTask{Group: "3", RunA: "1", RunB: "2", Files: []ArtifactDiff{{Path: "a/b", SHA256A: sha}}}
		}, true},
		{"diffoscope path ../x", func(a *Assignment) {
			a.Diffoscope = &DiffoscopeTask{Group: "3", RunA: "1", RunB: "2", Files: []ArtifactDiff{{Path: "../x", SHA256A: sha}}}
		}, false},
		{"diffoscope sha ../../x", func(a *Assignment) {
			a.Diffoscope = &DiffoscopeTask{Group: "3", RunA: "1", RunB: "2", Files: []ArtifactDiff{{Path: "x", SHA256B: "../../x"}}}
		}, false},
		{"diffoscope run ..", func(a *Assignment) { a.Diffoscope = &DiffoscopeTask{Group: "3", RunA: "..", RunB: "2"} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := valid()
			tt.mutate(a)
			err := a.Validate()
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidAssignment) {
				t.Fatalf("got %v, want ErrInvalidAssignment", err)
			}
		})
	}
}

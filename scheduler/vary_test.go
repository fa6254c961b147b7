package scheduler

import (
	"testing"

	"github.com/kiln-build/kiln/api"
)

// TestMemberVariations: member 1 differs from member 0 in each named
// variation the job varies and its tier can give; the rest are the
// baseline's and recorded as kept.
func TestMemberVariations(t *testing.T) {
	tests := []struct {
		name     string
		job      groupJob
		key      string
		base     string
		varied   string
		wantKept string
	}{
		{"cpus", groupJob{}, api.VariationCPUs, "", "1", ""},
		{"domain", groupJob{}, api.VariationDomain, "", "build-b.kiln.invalid", ""},
		{"home", groupJob{}, api.VariationHome, "", "/home/kiln-b", ""},
		{"shell", groupJob{}, api.VariationShell, "dash", "bash", ""},
		{"aslr", groupJob{}, api.VariationASLR, "", "off", ""},
		{"kernel", groupJob{}, api.VariationKernel, "", "uname26", ""},
		{"user_group", groupJob{}, api.VariationUserGroup, "", "kiln-b:kiln-b-grp", ""},
		{"time", groupJob{}, api.VariationTime, "", "+398d", ""},
		{"time kept", groupJob{Keep: []string{"time"}}, api.VariationTime, "", "", "time"},
		{"time on vm", groupJob{Isolation: api.IsolationVM}, api.VariationTime, "", "", "cpus,domain,aslr,kernel,time"},
		{"shell kept", groupJob{Keep: []string{"shell"}}, api.VariationShell, "", "", "shell"},
		{"only umask", groupJob{Vary: []string{"umask"}}, api.VariationUmask, "022", "002",
			"timezone,locale,user,build_path,hostname,cpus,domain,home,shell,aslr,kernel,user_group,time"},
		{"timezone kept", groupJob{Keep: []string{"timezone"}}, "TZ", "UTC", "UTC", "timezone"},
		{"cpus on vm", groupJob{Isolation: api.IsolationVM}, api.VariationCPUs, "", "", "cpus,domain,aslr,kernel,time"},
		{"aslr on gvisor", groupJob{Isolation: api.IsolationGVisor}, api.VariationASLR, "", "", "cpus,domain,aslr,kernel,time"},
		{"user_group on vm", groupJob{Isolation: api.IsolationVM}, api.VariationUserGroup, "", "kiln-b:kiln-b-grp", "cpus,domain,aslr,kernel,time"},
		{"home on vm", groupJob{Isolation: api.IsolationVM}, api.VariationHome, "", "/home/kiln-b", "cpus,domain,aslr,kernel,time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, v := memberVariations(0, 1, tt.job), memberVariations(1, 1, tt.job)
			if b[tt.key] != tt.base || v[tt.key] != tt.varied {
				t.Fatalf("%s: member 0 %q, member 1 %q; want %q, %q", tt.key, b[tt.key], v[tt.key], tt.base, tt.varied)
			}
			if b[api.VariationKept] != tt.wantKept || v[api.VariationKept] != tt.wantKept {
				t.Fatalf("kept %q, %q; want %q", b[api.VariationKept], v[api.VariationKept], tt.wantKept)
			}
		})
	}
}

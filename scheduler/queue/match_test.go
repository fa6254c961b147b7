package queue

import (
	"testing"

	"github.com/kiln-build/kiln/api"
)

// busybox is a host that offers the image busybox (version v1) on
// linux/amd64 with one free slot; each case changes what it needs.
func busybox(change func(*api.Facts)) *api.Facts {
	f := &api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1,
		Images: []api.ImageFact{{Name: "busybox", Versions: []string{"v1"}}}}
	if change != nil {
		change(f)
	}
	return f
}

// A run goes only to a host that offers its isolation; a host that sends
// no list (an older worker) runs containers and the default, and one that
// sends an empty list (it can run nothing) runs nothing. A guest with
// bridge networking needs a host that offers both.
func TestMatchesIsolation(t *testing.T) {
	host := func(isolations ...string) *api.Facts {
		return busybox(func(f *api.Facts) { f.Isolations = isolations })
	}
	withBridge := func(f *api.Facts) *api.Facts {
		f.Networks = []string{api.NetworkBridge}
		return f
	}
	for _, tc := range []struct {
		name      string
		isolation string
		network   api.Network
		host      *api.Facts
		want      bool
	}{
		{"vm bridge on vm host with bridge", api.IsolationVM, api.NetworkBridge, withBridge(host(api.IsolationContainer, api.IsolationVM)), true},
		{"vm bridge on vm host without bridge", api.IsolationVM, api.NetworkBridge, host(api.IsolationContainer, api.IsolationVM), false},
		{"vm bridge on bridge host without vm", api.IsolationVM, api.NetworkBridge, withBridge(host(api.IsolationContainer)), false},
		{"vm none on vm host with bridge", api.IsolationVM, api.NetworkNone, withBridge(host(api.IsolationContainer, api.IsolationVM)), true},
		{"default on old host", "", "", host(), true},
		{"container on old host", api.IsolationContainer, "", host(), true},
		{"vm on old host", api.IsolationVM, "", host(), false},
		{"vm on container host", api.IsolationVM, "", host(api.IsolationContainer), false},
		{"vm on vm host", api.IsolationVM, "", host(api.IsolationContainer, api.IsolationVM), true},
		{"default on vm host", "", "", host(api.IsolationContainer, api.IsolationVM), true},
		{"gvisor on vm host", api.IsolationGVisor, "", host(api.IsolationContainer, api.IsolationVM), false},
		{"default on host that runs nothing", "", "", host([]string{}...), false},
		{"container on host that runs nothing", api.IsolationContainer, "", host([]string{}...), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &api.Job{Name: "j", Image: "busybox", Script: "true", Isolation: tc.isolation}
			j.Resources.Network = tc.network
			if got := Matches(j, tc.host); got != tc.want {
				t.Errorf("Matches = %v, want %v", got, tc.want)
			}
		})
	}
}

// Mismatch names the first requirement a host misses, in the order the
// web view relies on, and Refusal words it.
func TestMismatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		job     func(*api.Job)
		host    func(*api.Facts)
		want    Fit
		refusal string
	}{
		{"fits", nil, nil, FitOK, ""},
		{"os", func(j *api.Job) { j.Constraints.OS = "freebsd" }, nil, FitOS, "os is linux"},
		{"arch", func(j *api.Job) { j.Arch = "arm64" }, nil, FitArch, "cannot run arch arm64"},
		{"emulated arch", func(j *api.Job) { j.Arch = "arm64" }, func(f *api.Facts) {
			f.EmulatedArchs = []string{"arm64"}
			f.Images[0].Arch = "arm64"
		}, FitOK, ""},
		{"image of another arch", func(j *api.Job) { j.Arch = "arm64" }, func(f *api.Facts) {
			f.EmulatedArchs = []string{"arm64"}
			f.Images[0].Arch = "amd64"
		}, FitImage, "has no image busybox"},
		{"network", func(j *api.Job) { j.Resources.Network = api.NetworkBridge }, nil, FitNetwork, "does not offer network bridge"},
		{"cache", func(j *api.Job) { j.Caches = []string{"go"} }, nil, FitCache, "lacks a cache of go"},
		{"cache offered", func(j *api.Job) { j.Caches = []string{"go"} }, func(f *api.Facts) { f.Caches = []string{"go"} }, FitOK, ""},
		{"image", func(j *api.Job) { j.Image = "alpine" }, nil, FitImage, "has no image alpine"},
		{"pinned version", func(j *api.Job) { j.Image = "busybox@v1" }, nil, FitOK, ""},
		{"pinned version missing", func(j *api.Job) { j.Image = "busybox@v2" }, nil, FitImage, "has no image busybox@v2"},
		{"image without versions", nil, func(f *api.Facts) { f.Images[0].Versions = nil }, FitImage, "has no image busybox"},
		{"label", func(j *api.Job) { j.Constraints.Labels = map[string]string{"gpu": "1"} }, nil, FitLabel, `lacks the labels "gpu":"1"`},
		{"label offered", func(j *api.Job) { j.Constraints.Labels = map[string]string{"gpu": "1"} },
			func(f *api.Facts) { f.Labels = map[string]string{"gpu": "1"} }, FitOK, ""},
		{"os before image", func(j *api.Job) { j.Constraints.OS = "freebsd"; j.Image = "alpine" }, nil, FitOS, "os is linux"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &api.Job{Name: "j", Image: "busybox", Script: "true"}
			if tc.job != nil {
				tc.job(j)
			}
			f := busybox(tc.host)
			if got := Mismatch(j, f); got != tc.want {
				t.Errorf("Mismatch = %d, want %d", got, tc.want)
			}
			if got, over := Refusal(j, f); got != tc.refusal || over {
				t.Errorf("Refusal = %q (over limit %v), want %q", got, over, tc.refusal)
			}
			if got := Matches(j, f); got != (tc.want == FitOK) {
				t.Errorf("Matches = %v", got)
			}
		})
	}
}

// A host with no free slot fits a job (Mismatch) but does not match it
// now.
func TestMatchesNeedsASlot(t *testing.T) {
	j := &api.Job{Name: "j", Image: "busybox", Script: "true"}
	f := busybox(func(f *api.Facts) { f.FreeSlots = 0 })
	if Mismatch(j, f) != FitOK || Matches(j, f) {
		t.Fatalf("a host without a free slot: Mismatch %d, Matches %v", Mismatch(j, f), Matches(j, f))
	}
}

// A job asking more than a host's maximum is refused with the resource in
// the reason, marked as a limit.
func TestRefusalOverLimit(t *testing.T) {
	j := &api.Job{Name: "j", Image: "busybox", Script: "true"}
	j.Resources.Memory = 64 << 30
	f := busybox(func(f *api.Facts) { f.Limits = api.Limits{Memory: 16 << 30} })
	if got := Mismatch(j, f); got != FitLimit {
		t.Fatalf("Mismatch = %d, want FitLimit", got)
	}
	if why, over := Refusal(j, f); why != "memory=64GiB (max 16GiB)" || !over {
		t.Fatalf("Refusal = %q, %v", why, over)
	}
}

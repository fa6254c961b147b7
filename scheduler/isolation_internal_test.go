package scheduler

import (
	"testing"

	"github.com/kiln-build/kiln/api"
)

// A run goes only to a host that offers its isolation; a host that sends
// no list (an older worker) runs containers and the default, and one that
// sends an empty list (it can run nothing) runs nothing. A guest with
// bridge networking needs a host that offers both.
func TestMatchesIsolation(t *testing.T) {
	host := func(isolations ...string) *api.Facts {
		return &api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1, Isolations: isolations,
			Images: []api.ImageFact{{Name: "busybox", Versions: []string{"v1"}}}}
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
			if got := matches(j, tc.host); got != tc.want {
				t.Errorf("matches = %v, want %v", got, tc.want)
			}
		})
	}
}

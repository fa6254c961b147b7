package linux

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/pkg/netns"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// TestNotHostNetns: the check that stands in for runsc's own refuses the
// host's network namespace, under any path, and takes a new one.
func TestNotHostNetns(t *testing.T) {
	testsupport.NeedRoot(t)
	fresh, err := netns.NewNetNS(filepath.Join(t.TempDir(), "netns"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh.Remove() })
	for _, tt := range []struct {
		name, path string
		host       bool
	}{
		{"own", "/proc/self/ns/net", true},
		{"own, pinned elsewhere", pinOwnNetns(t), true},
		{"fresh", fresh.GetPath(), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := notHostNetns(tt.path)
			if tt.host && !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("notHostNetns(%s) = %v, want the host's refused", tt.path, err)
			}
			if !tt.host && err != nil {
				t.Errorf("notHostNetns(%s) = %v, want nil", tt.path, err)
			}
		})
	}
}

// pinOwnNetns bind-mounts this process's network namespace on a file, as
// a pinned namespace is.
func pinOwnNetns(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "own")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/proc/self/ns/net", p, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
	return p
}

// TestGVisorHostNetworkRefused: gVisor never gets the host's network
// namespace; the refusal comes before anything is made.
func TestGVisorHostNetworkRefused(t *testing.T) {
	testsupport.NeedCommand(t, "runsc")
	c, _ := newLauncher(t)
	spec, _ := shSpec(t, "true")
	spec.Isolation = api.IsolationGVisor
	spec.Network = sandbox.NetworkHost
	_, err := c.Start(context.Background(), spec)
	if !errors.Is(err, errdefs.ErrUnsupported) || !strings.Contains(err.Error(), "host's network namespace") {
		t.Fatalf("Start = %v, want the host network refused", err)
	}
	if ids, err := c.containerIDs(context.Background()); err != nil || len(ids) > 1 { // the shim anchor
		t.Fatalf("containers after the refusal: %v %v", ids, err)
	}
}

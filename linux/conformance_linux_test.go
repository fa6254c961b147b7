package linux

import (
	"context"
	"log/slog"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/launchertest"
)

func TestContainerdConformance(t *testing.T) {
	launchertest.Run(t, launchertest.Config{Open: openContainerd(t)})
}

func TestGVisorConformance(t *testing.T) {
	testsupport.NeedCommand(t, "runsc")
	launchertest.Run(t, launchertest.Config{Open: openContainerd(t), Isolation: names.IsolationGVisor,
		Skip: map[string]string{
			// TODO: fix, then drop this opt-out.
			"Ended": "KNOWN BUG, not an opt-out: under gVisor, Attach to an ended run fails on the stdout fifo instead of ErrNotFound, " +
				"and Reap of an ended sandbox fails (runsc kill: sandbox is not running), so the run cannot start again",
		}})
}

// openContainerd opens launchers on one private containerd, each owner's
// with its shared shims in its data dir, as the worker's are.
func openContainerd(t *testing.T) func(*testing.T, launchertest.Owner) sandbox.Launcher {
	addr := testsupport.StartContainerd(t)
	init := testsupport.SandboxInit(t)
	return func(t *testing.T, o launchertest.Owner) sandbox.Launcher {
		c, err := NewContainerd(context.Background(), ContainerdConfig{Address: addr, Owner: o.ID, DataDir: o.Dir,
			ShareShimDir: o.Dir, ShimGroups: 1, SandboxInit: init, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
		if err != nil {
			t.Fatalf("NewContainerd: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

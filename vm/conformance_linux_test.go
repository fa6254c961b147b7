package vm

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/launchertest"
)

// Each case boots one to three guests under TCG: 12 guests, about two
// minutes on a loaded host.
func TestVMConformance(t *testing.T) {
	testsupport.NeedVM(t)
	launchertest.Run(t, launchertest.Config{
		Open: func(t *testing.T, o launchertest.Owner) sandbox.Launcher {
			// TCG: KVM is not usable here (docs/vm.md), and a probe would
			// cost a boot per owner.
			l, err := New(Options{Dir: filepath.Join(o.Dir, "vm"), Accel: "tcg"}, slog.New(slog.NewTextHandler(t.Output(), nil)))
			if err != nil {
				t.Fatalf("vm.New: %v", err)
			}
			return l
		},
		Skip: map[string]string{
			"Reattach": "docs/vm.md, Lifecycle: a guest is not reattached after a worker restart (the run is requeued); vm.Launcher is no sandbox.Attacher",
			// TODO: fix in vm_linux.go, then drop these two.
			"KilledBySignal": "KNOWN BUG, not an opt-out: guest.Wait reports exit 137 without Signal \"SIGKILL\" (the container tier maps 128+n to its name)",
			"SignalTerm":     "KNOWN BUG, not an opt-out: Signal after the guest ended fails (its QMP socket is gone) instead of nil; Timeout still checks SIGTERM reaching the job",
		},
	})
}

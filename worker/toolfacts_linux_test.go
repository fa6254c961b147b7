package worker

import (
	"context"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/qemu"
)

// TestToolFacts: the host's runc and qemu-user interpreters answer with
// their versions, as the provenance records them.
func TestToolFacts(t *testing.T) {
	testsupport.NeedCommand(t, "runc")
	f := map[string]string{}
	toolFacts(context.Background(), config.DefaultHost(), f)
	if !strings.HasPrefix(f["runc"], "runc version ") {
		t.Errorf("runc fact %q", f["runc"])
	}
	caps, err := qemu.Detect(context.Background())
	if err == nil && len(caps.Emulated) > 0 {
		for _, e := range strings.Split(f["qemu_user"], ",") {
			arch, v, ok := strings.Cut(e, "=")
			if !ok || !caps.Runnable(arch) || !strings.Contains(v, "version") {
				t.Errorf("qemu_user entry %q (fact %q)", e, f["qemu_user"])
			}
		}
	}
	t.Logf("runc=%q qemu=%q qemu_user=%q", f["runc"], f["qemu"], f["qemu_user"])
}

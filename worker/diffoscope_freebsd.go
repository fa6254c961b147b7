package worker

import (
	"context"
	"io"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// runDiffoscope runs the diffoscope hook on the host, as any hook: a jail
// of its own is not made for it yet (docs/host-tools.md says so).
func (w *Worker) runDiffoscope(ctx context.Context, _ *api.Assignment, h sandbox.Hook, env map[string]string, d diffoscopeDirs, console io.Writer) sandbox.Check {
	env["KILN_ARTIFACTS_A"] = d.a
	env["KILN_ARTIFACTS_B"] = d.b
	env["KILN_REPORT"] = d.out + "/" + api.DiffoscopeReport
	return sandbox.RunHook(ctx, h, env, d.task, console)
}

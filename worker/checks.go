package worker

import (
	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// apiChecks turns the runner's hook outcomes into the wire form.
func apiChecks(cs []sandbox.Check) []api.Check {
	out := make([]api.Check, 0, len(cs))
	for _, c := range cs {
		out = append(out, api.Check{Name: c.Name, Stage: string(c.Stage), ExitCode: c.ExitCode, Error: c.Err})
	}
	return out
}

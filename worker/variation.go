package worker

import (
	"maps"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// applyVariations puts a reproduce group member's variations into req. The
// env variations (api.VariationEnv) override the job's own env of the same
// name: varying them is what the group is for, and SOURCE_DATE_EPOCH must
// be the group's for every member.
func applyVariations(req *sandbox.Request, v map[string]string) {
	if len(v) == 0 {
		return
	}
	env := maps.Clone(req.Env)
	if env == nil {
		env = map[string]string{}
	}
	for _, k := range api.VariationEnv {
		if val, ok := v[k]; ok {
			env[k] = val
		}
	}
	req.Env = env
	req.Umask = v[api.VariationUmask]
	req.User = v[api.VariationUser]
	req.Cwd = v[api.VariationCwd]
	req.Hostname = v[api.VariationHostname]
}

// apiChecks turns the runner's hook outcomes into the wire form.
func apiChecks(cs []sandbox.Check) []api.Check {
	out := make([]api.Check, 0, len(cs))
	for _, c := range cs {
		out = append(out, api.Check{Name: c.Name, Stage: string(c.Stage), ExitCode: c.ExitCode, Error: c.Err})
	}
	return out
}

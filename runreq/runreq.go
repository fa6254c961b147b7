// Package runreq turns a job into the sandbox runner's request by a
// host's policy: the one place where a job's limits, image, arch, hooks,
// host tools, caches and inputs are checked against what the host allows
// and resolved, for the worker (runs leased from a server) and `kiln
// exec` (a job file run on the host) alike. It imports the wire types and
// the sandbox layer, which do not import each other.
package runreq

import (
	"context"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Policy is what a host lets runs have: the definitions a job picks its
// hooks, host tools and caches from (it can never bring its own), and the
// per-run limits ([limits]).
type Policy struct {
	Hooks     map[string]sandbox.Hook
	HostTools map[string]string
	Caches    map[string]cache.Def
	// Defaults apply to what a job does not ask for; a job asking more
	// than a maximum of Max is refused.
	Defaults, Max api.Limits
	// Config names the host config in errors; "" is "the host config".
	Config string
}

// Images resolves a job's image on this host.
type Images interface {
	// Resolve maps "name" (newest snapshot) or "name@version" to a
	// snapshot ref and its arch; an unknown image wraps
	// errdefs.ErrNotFound. Safe for concurrent use; ctx bounds the lookup.
	Resolve(ctx context.Context, ref string) (snapshot, arch string, err error)
}

// Run is one run of a job on this host, as its caller knows it.
type Run struct {
	ID      string
	Attempt int
	Job     *api.Job
	// CacheOwner is who the run's caches are kept for (cache.ValidOwner):
	// the server's key of the job's owner, or cache.LocalOwner for the
	// host's own runs. "" (an old server) makes the runner refuse caches
	// that are not shared.
	CacheOwner string
	// Variations are a reproduce group member's changes (api.Variation*);
	// only runs leased from a server have them.
	Variations map[string]string
	// Inputs, when set, places the job's inputs on the host; it is called
	// last, once everything else of the run is known to be allowed.
	Inputs  func(ctx context.Context) ([]sandbox.InputFile, error)
	OutDir  string
	Console io.Writer
	// Cloned is sandbox.Request.Cloned (the worker's hold on the image).
	Cloned func()
}

// Request checks run against p and resolves it into a request: the run's
// limits (a job over a maximum is refused), its image on this host (the
// arch the job names must be the image's), the hooks, host tools and
// caches it names from the host's, its variations, then its inputs. Once
// the image resolved, the request carries its Snapshot even on error, for
// the caller to report.
func (p Policy) Request(ctx context.Context, images Images, run Run) (sandbox.Request, error) {
	lim, err := p.limits(run.Job)
	if err != nil {
		return sandbox.Request{}, err
	}
	j := run.Job
	snapshot, arch, err := images.Resolve(ctx, j.Image)
	if err != nil {
		return sandbox.Request{}, fmt.Errorf("image %s: %w", j.Image, err)
	}
	req := sandbox.Request{Snapshot: snapshot}
	if j.Arch != "" && j.Arch != arch {
		return req, fmt.Errorf("job wants arch %s, image %s is %s: %w", j.Arch, snapshot, arch, errdefs.ErrUnsupported)
	}
	hooks, err := p.hooks(j.Hooks.Pre, j.Hooks.Post, j.Hooks.Cleanup)
	if err != nil {
		return req, err
	}
	tools, err := sandbox.SelectHostTools(p.HostTools, j.HostTools)
	if err != nil {
		return req, fmt.Errorf("%w (see [host_tools] in %s)", err, p.config())
	}
	caches, err := sandbox.SelectCaches(p.Caches, j.Caches)
	if err != nil {
		return req, fmt.Errorf("%w (see [caches] in %s)", err, p.config())
	}
	req = base(run, lim, hooks)
	req.Snapshot, req.Arch = snapshot, arch
	req.Script, req.Env, req.Isolation = j.Script, j.Env, j.Isolation
	req.Resources = sandbox.ResourcesOf(lim, sandbox.NetworkMode(j.Resources.Network.Mode()))
	req.HostTools, req.Caches, req.CacheOwner = tools, caches, run.CacheOwner
	req.Cloned = run.Cloned
	applyVariations(&req, run.Variations)
	if run.Inputs != nil {
		if req.Inputs, err = run.Inputs(ctx); err != nil {
			return sandbox.Request{Snapshot: snapshot}, err
		}
	}
	return req, nil
}

// Reattach is the request that takes back run's sandbox, which a previous
// process started (sandbox.Request.Reattach): what the end of the run
// needs (its timeout, post and cleanup hooks, artifacts); the runner finds
// its clone and sandbox from the run's record.
func (p Policy) Reattach(run Run) (sandbox.Request, error) {
	lim, err := p.limits(run.Job)
	if err != nil {
		return sandbox.Request{}, err
	}
	hooks, err := p.hooks(nil, run.Job.Hooks.Post, run.Job.Hooks.Cleanup)
	if err != nil {
		return sandbox.Request{}, err
	}
	req := base(run, lim, hooks)
	req.Reattach = true
	return req, nil
}

// base is what every request of run has, launched or reattached.
func base(run Run, lim api.Limits, hooks []sandbox.Hook) sandbox.Request {
	return sandbox.Request{
		RunID:     run.ID,
		Job:       run.Job.Name,
		Attempt:   run.Attempt,
		Timeout:   lim.Timeout.Std(),
		Artifacts: run.Job.Artifacts,
		OutDir:    run.OutDir,
		Console:   run.Console,
		Hooks:     hooks,
	}
}

// limits are what a run of j gets here; a job over a maximum (the host's
// config changed since the server leased it, or a job file) is refused.
func (p Policy) limits(j *api.Job) (api.Limits, error) {
	lim, err := j.LimitsOn(p.Defaults, p.Max)
	if err != nil {
		return lim, fmt.Errorf("%w (see [limits] in %s)", err, p.config())
	}
	return lim, nil
}

func (p Policy) hooks(pre, post, cleanup []string) ([]sandbox.Hook, error) {
	hooks, err := sandbox.SelectHooks(p.Hooks, pre, post, cleanup)
	if err != nil {
		return nil, fmt.Errorf("%w (see [hooks] in %s)", err, p.config())
	}
	return hooks, nil
}

func (p Policy) config() string {
	if p.Config == "" {
		return "the host config"
	}
	return p.Config
}

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
	cpus, _ := strconv.Atoi(v[api.VariationCPUs]) // api.Assignment.Validate checked it
	req.Vary = sandbox.Variations{
		CPUs:   cpus,
		Domain: v[api.VariationDomain],
		Home:   v[api.VariationHome],
		Shell:  v[api.VariationShell],
		// api.Assignment.Validate checked the values.
		NoASLR:  v[api.VariationASLR] == "off",
		Uname26: v[api.VariationKernel] == "uname26",
		Clock:   v[api.VariationTime],
	}
	req.Vary.UserName, req.Vary.GroupName, _ = strings.Cut(v[api.VariationUserGroup], ":")
}

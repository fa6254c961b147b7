package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/kiln-build/kiln/names"
)

// ErrInvalidJob is wrapped by every validation error of a job file.
var ErrInvalidJob = errors.New("invalid job")

// Limits of a job, checked by the CLI and again by the server, so that one
// client cannot make the server store or queue without bound.
const (
	// MaxJobFile bounds a job file, and the JSON of a job sent to the
	// server (job add, job modify).
	MaxJobFile = 1 << 20
	// MaxScript bounds a job's script.
	MaxScript = 256 << 10
	// MaxReproduce bounds reproduce = N (and execute --reproduce N): each
	// member of a reproduce group wants a host of its own.
	MaxReproduce = 16
)

// Job is a stored job definition: the job file, parsed and validated.
type Job struct {
	Name      string   `toml:"name" json:"name"`
	Image     string   `toml:"image" json:"image"`
	Arch      string   `toml:"arch,omitempty" json:"arch,omitempty"`
	Script    string   `toml:"script" json:"script"`
	Timeout   Duration `toml:"timeout,omitzero" json:"timeout,omitempty"`
	Schedule  string   `toml:"schedule,omitempty" json:"schedule,omitempty"`
	Artifacts []string `toml:"artifacts,omitempty" json:"artifacts,omitempty"`
	// Reproduce is reproduce = N, or runs of the [reproduce] table.
	Reproduce int `toml:"-" json:"reproduce,omitempty"`
	// Priority orders the runs of the job's owner: higher first (default
	// 0; negative is lower). It never moves a run ahead of another
	// owner's: runs are shared fairly between owners.
	Priority int `toml:"priority,omitempty" json:"priority,omitempty"`
	// Vary and Keep are [reproduce] vary and keep (api.VariationNames): a
	// group varies what Vary names (all when empty) except what Keep names.
	Vary        []string          `toml:"-" json:"vary,omitempty"`
	Keep        []string          `toml:"-" json:"keep,omitempty"`
	Env         map[string]string `toml:"env,omitempty" json:"env,omitempty"`
	Resources   Resources         `toml:"resources,omitempty" json:"resources"`
	Constraints Constraints       `toml:"constraints,omitempty" json:"constraints"`
	Inputs      []Input           `toml:"inputs,omitempty" json:"inputs,omitempty"`
	Hooks       Hooks             `toml:"hooks,omitempty" json:"hooks"`
	HostTools   []string          `toml:"host_tools,omitempty" json:"host_tools,omitempty"`
	// Caches names host-defined caches the job uses (worker.toml
	// [caches.NAME]); a host that lacks one never runs the job.
	Caches []string `toml:"caches,omitempty" json:"caches,omitempty"`
	// Isolation is the kind of sandbox the job runs in: one of the
	// Isolation* constants; "" is the host's default (a container, a jail
	// on FreeBSD).
	Isolation string `toml:"isolation" json:"isolation,omitempty"`

	// Needs are the jobs whose artifacts this one builds on ([[needs]]):
	// executing the job runs them first unless a successful run with a
	// matching key exists (docs/job-file.md, "Needs"). See needs.go.
	Needs []Need `toml:"needs,omitempty" json:"needs,omitempty"`
	// On are the events that execute the job: "success:JOB" after each
	// successful run of JOB, "image:NAME" after each new version of the
	// server-held image NAME.
	On []string `toml:"on,omitempty" json:"on,omitempty"`
	// Notify are the job's [[notify]]: where its run events are POSTed
	// (api/notify.go, docs/webhooks.md).
	Notify []Notify `toml:"notify,omitempty" json:"notify,omitempty"`
	// Retention is the job's [retention] table: its rules replace the
	// server's key by key (docs/retention.md).
	Retention *Retention `toml:"retention,omitempty" json:"retention,omitempty"`
	// Publish says which repository the job's packages go to, and when
	// (docs/publishing.md); nil: nowhere.
	Publish *Publish `toml:"publish,omitempty" json:"publish,omitempty"`
	// ImageBuild makes the job an image build (api/imagebuild.go): set
	// by `kiln image build` only, never read from a job file. Its host
	// builds the image instead of running Script, and Image is empty.
	ImageBuild *ImageBuild `toml:"-" json:"image_build,omitempty"`
}

// Isolations a job may ask for (Job.Isolation) and a host may offer
// (Facts.Isolations).
const (
	IsolationContainer = names.IsolationContainer // containerd + runc on Linux (hardened, docs/security.md), a jail on FreeBSD
	IsolationGVisor    = names.IsolationGVisor    // the same container run by gVisor's runsc
	IsolationVM        = names.IsolationVM        // a qemu-system guest with its own kernel
)

// Resources are the limits a job asks for.
type Resources struct {
	Memory  Size    `toml:"memory,omitempty" json:"memory,omitempty"`
	CPUs    float64 `toml:"cpus,omitempty" json:"cpus,omitempty"`
	Pids    int64   `toml:"pids,omitempty" json:"pids,omitempty"`
	Network Network `toml:"network,omitempty" json:"network,omitempty"`
	// Disk bounds what the run writes into its clone, /work and /out.
	Disk Size `toml:"disk,omitempty" json:"disk,omitempty"`
}

// Network modes a job can ask for in resources.network.
const (
	// NetworkNone: a network namespace of its own with loopback only (the
	// default; "" means the same).
	NetworkNone = "none"
	// NetworkBridge: a private network namespace with NAT egress and the
	// host's DNS; the host itself and other sandboxes are unreachable.
	NetworkBridge = "bridge"
	// NetworkHost: the host's own network namespace, only on hosts whose
	// worker.toml sets [run] allow_host_network = true.
	NetworkHost = "host"
)

// Network is a job's network mode (resources.network): "none", "bridge" or
// "host". Job files written before the modes existed say true or false,
// which still decode as "bridge" and "none"; the wire form is the string.
type Network string

// Mode is the mode with the default filled in.
func (n Network) Mode() string {
	if n == "" {
		return NetworkNone
	}
	return string(n)
}

// UnmarshalTOML takes a mode string or the old boolean.
func (n *Network) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*n = Network(v)
	case bool:
		*n = networkFromBool(v)
	default:
		return fmt.Errorf("resources.network: want \"none\", \"bridge\" or \"host\", not %T", v)
	}
	return nil
}

// UnmarshalJSON takes a mode string or the old boolean (jobs stored by an
// older server).
func (n *Network) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v == nil {
		*n = ""
		return nil
	}
	return n.UnmarshalTOML(v)
}

func networkFromBool(on bool) Network {
	if on {
		return NetworkBridge
	}
	return NetworkNone
}

// Constraints select the hosts a job may run on.
type Constraints struct {
	OS     string            `toml:"os,omitempty" json:"os,omitempty"`
	Labels map[string]string `toml:"labels,omitempty" json:"labels,omitempty"`
}

// Input is a file placed read-only at /in/<Path>.
type Input struct {
	Path   string `toml:"path" json:"path"`
	SHA256 string `toml:"sha256" json:"sha256"`
}

// Hooks name host-defined hooks; a job can never define a command itself.
type Hooks struct {
	Pre     []string `toml:"pre,omitempty" json:"pre,omitempty"`
	Post    []string `toml:"post,omitempty" json:"post,omitempty"`
	Cleanup []string `toml:"cleanup,omitempty" json:"cleanup,omitempty"`
}

// DefaultTimeout applies when a job sets none.
const DefaultTimeout = time.Hour

var (
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// plainJob is Job without its methods, so that jobFile does not take
// Job's MarshalTOML.
type plainJob Job

// jobFile is a job file: Job, with reproduce either a number (reproduce =
// N) or a table ([reproduce] runs, vary, keep).
type jobFile struct {
	plainJob
	Reproduce any `toml:"reproduce,omitempty"`
}

// reproduce puts the file's reproduce key into j.
func (f jobFile) reproduce(j *Job) error {
	switch v := f.Reproduce.(type) {
	case nil:
	case int64:
		if v < 0 || v > MaxReproduce {
			return fmt.Errorf("reproduce %d: want 0 (off) or 2..%d", v, MaxReproduce)
		}
		j.Reproduce = int(v)
	case map[string]any:
		for k, x := range v {
			var err error
			switch k {
			case "runs":
				n, ok := x.(int64)
				if !ok || n < 0 || n > MaxReproduce {
					return fmt.Errorf("reproduce.runs: want 0 (off) or 2..%d", MaxReproduce)
				}
				j.Reproduce = int(n)
			case "vary":
				j.Vary, err = stringList("reproduce.vary", x)
			case "keep":
				j.Keep, err = stringList("reproduce.keep", x)
			default:
				return fmt.Errorf("unknown key \"reproduce.%.40s\"", k)
			}
			if err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("reproduce: want a number or a table (runs, vary, keep), not %T", v)
	}
	return nil
}

func stringList(key string, x any) ([]string, error) {
	l, ok := x.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a list of variation names", key)
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("%s: want a list of variation names", key)
		}
		out = append(out, s)
	}
	return out, nil
}

// MarshalTOML writes j as a job file: reproduce stays a number unless
// the job has vary or keep.
func (j Job) MarshalTOML() ([]byte, error) {
	f := jobFile{plainJob: plainJob(j)}
	switch {
	case len(j.Vary) > 0 || len(j.Keep) > 0:
		t := map[string]any{"runs": j.Reproduce}
		if len(j.Vary) > 0 {
			t["vary"] = j.Vary
		}
		if len(j.Keep) > 0 {
			t["keep"] = j.Keep
		}
		f.Reproduce = t
	case j.Reproduce != 0:
		f.Reproduce = j.Reproduce
	}
	var b bytes.Buffer
	err := toml.NewEncoder(&b).Encode(f)
	return b.Bytes(), err
}

// Varied is the named variations (VariationNames) a reproduce group of j
// applies: those Vary names, or all, less those Keep names.
func (j *Job) Varied() []string {
	var out []string
	for _, n := range VariationNames {
		if (len(j.Vary) == 0 || slices.Contains(j.Vary, n)) && !slices.Contains(j.Keep, n) {
			out = append(out, n)
		}
	}
	return out
}

// ParseJobFile decodes and validates a job file. Errors are one line, name
// the offending key (and its line where known), and wrap ErrInvalidJob.
func ParseJobFile(data []byte) (*Job, error) {
	if len(data) > MaxJobFile {
		return nil, fmt.Errorf("%w: the job file has %d bytes; at most %d are allowed", ErrInvalidJob, len(data), MaxJobFile)
	}
	var f jobFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: line %d: %s", ErrInvalidJob, pe.Position.Line, firstLine(pe.Message))
		}
		return nil, fmt.Errorf("%w: %s", ErrInvalidJob, firstLine(err.Error()))
	}
	// reproduce's table is decoded into an any; jobFile.reproduce checks it.
	und := slices.DeleteFunc(md.Undecoded(), func(k toml.Key) bool { return len(k) > 1 && k[0] == "reproduce" })
	if len(und) > 0 {
		k := und[0].String()
		if line := keyLine(data, und[0][len(und[0])-1]); line > 0 {
			return nil, fmt.Errorf("%w: line %d: unknown key %q", ErrInvalidJob, line, k)
		}
		return nil, fmt.Errorf("%w: unknown key %q", ErrInvalidJob, k)
	}
	j := Job(f.plainJob)
	if err := f.reproduce(&j); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidJob, err)
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return &j, nil
}

// Validate checks a decoded job. It is also what the server runs on a job
// that arrives as JSON.
func (j *Job) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidJob}, a...)...)
	}
	switch {
	case j.Name == "":
		return bad("missing key \"name\"")
	case !names.Valid(j.Name):
		return bad("name %q: use letters, digits, '.', '_', '-' (no '/' or '..'), at most 63", j.Name)
	case j.ImageBuild != nil && j.ImageBuild.Check() != nil:
		return bad("%v", j.ImageBuild.Check())
	case j.ImageBuild != nil && (j.Image != "" || j.Name != ImageBuildJob(j.ImageBuild.Name)):
		return bad("image build job %q: want the name %q and no image", j.Name, ImageBuildJob(j.ImageBuild.Name))
	case j.ImageBuild != nil:
		// No image: the build makes one. The checks below still apply.
	case j.Image == "":
		return bad("missing key \"image\"")
	case !names.ValidImageRef(j.Image):
		return bad("image %q: want NAME or NAME@VERSION with no '/' or '..'", j.Image)
	case strings.TrimSpace(j.Script) == "":
		return bad("script is empty")
	case j.Resources.Memory < 0 || j.Resources.CPUs < 0 || j.Resources.Pids < 0 || j.Resources.Disk < 0:
		return bad("resources must not be negative")
	case j.Resources.Memory != 0 && j.Resources.Memory < 4<<20:
		return bad("resources.memory %d bytes is below the 4MiB minimum", j.Resources.Memory)
	case j.Resources.Disk != 0 && j.Resources.Disk < 1<<20:
		return bad("resources.disk %d bytes is below the 1MiB minimum", j.Resources.Disk)
	case len(j.Script) > MaxScript:
		return bad("script has %d bytes; at most %d are allowed (put more into an input)", len(j.Script), MaxScript)
	case j.Reproduce < 0 || j.Reproduce == 1 || j.Reproduce > MaxReproduce:
		return bad("reproduce %d: want 0 (off) or 2..%d", j.Reproduce, MaxReproduce)
	case j.Timeout < 0:
		return bad("timeout must be positive")
	}
	for _, l := range []struct {
		key   string
		names []string
	}{{"reproduce.vary", j.Vary}, {"reproduce.keep", j.Keep}} {
		for i, n := range l.names {
			if !slices.Contains(VariationNames, n) {
				return bad("%s: %.40q is not a variation (want one of %s)", l.key, n, strings.Join(VariationNames, ", "))
			}
			if slices.Contains(l.names[:i], n) {
				return bad("%s: %q given twice", l.key, n)
			}
		}
	}
	if j.Retention != nil {
		if err := j.Retention.Validate(); err != nil {
			return bad("%v", err)
		}
	}
	switch j.Resources.Network {
	case "", NetworkNone, NetworkBridge, NetworkHost:
	default:
		return bad("resources.network %q: want \"none\" (the default), \"bridge\" or \"host\"", string(j.Resources.Network))
	}
	for k := range j.Env {
		if !envKeyRe.MatchString(k) {
			return bad("env key %q is not a valid variable name", k)
		}
		if strings.HasPrefix(k, "KILN_") {
			return bad("env key %q: KILN_* is reserved", k)
		}
	}
	for _, g := range j.Artifacts {
		if _, err := path.Match(g, ""); err != nil || g == "" || path.IsAbs(g) || names.HasDotDot(g) {
			return bad("artifacts glob %q: want a relative pattern under /out", g)
		}
	}
	seen := map[string]bool{}
	for _, in := range j.Inputs {
		if err := names.ValidRelPath(in.Path); err != nil {
			return bad("inputs path %q: %v", in.Path, err)
		}
		if !sha256Re.MatchString(in.SHA256) {
			return bad("inputs %q: sha256 must be 64 lowercase hex digits", in.Path)
		}
		if seen[in.Path] {
			return bad("inputs path %q given twice", in.Path)
		}
		seen[in.Path] = true
	}
	for _, hs := range [][]string{j.Hooks.Pre, j.Hooks.Post, j.Hooks.Cleanup, j.HostTools} {
		for _, h := range hs {
			if !names.Valid(h) {
				return bad("hook or host tool name %q is not a valid name", h)
			}
		}
	}
	seenCache := map[string]bool{}
	for _, c := range j.Caches {
		if !names.Valid(c) {
			return bad("cache name %q is not a valid name", c)
		}
		if seenCache[c] {
			return bad("cache %q named twice", c)
		}
		seenCache[c] = true
	}
	switch j.Isolation {
	case "", IsolationContainer, IsolationGVisor, IsolationVM:
	default:
		return bad("isolation %q: want container, gvisor or vm", j.Isolation)
	}
	if j.Isolation == IsolationGVisor && j.Resources.Network.Mode() == NetworkHost {
		// runsc runs its network stack only in a namespace of its own.
		return bad("resources.network \"host\" with isolation \"gvisor\": gVisor never shares the host's network namespace; use \"bridge\" or \"none\"")
	}
	if j.Isolation == IsolationVM && j.Resources.Network == NetworkHost {
		// No host could run it: a guest has a kernel and a network stack
		// of its own.
		return bad("resources.network \"host\" with isolation \"vm\": a guest cannot share the host's network namespace; use \"bridge\"")
	}
	if j.Constraints.OS != "" && j.Constraints.OS != "linux" && j.Constraints.OS != "freebsd" {
		return bad("constraints.os %q: want linux or freebsd", j.Constraints.OS)
	}
	if err := validateNotify(j.Notify); err != nil {
		return bad("%v", err)
	}
	if j.Publish != nil {
		if err := j.Publish.validate(j); err != nil {
			return bad("%v", err)
		}
	}
	return j.validateNeeds()
}

// TimeoutOrDefault is the job's timeout, or DefaultTimeout.
func (j *Job) TimeoutOrDefault() time.Duration {
	if j.Timeout > 0 {
		return time.Duration(j.Timeout)
	}
	return DefaultTimeout
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// keyLine finds the first line that assigns key, for error messages.
func keyLine(data []byte, key string) int {
	re := regexp.MustCompile(`^\s*("?)` + regexp.QuoteMeta(key) + `("?)\s*=`)
	for i, l := range strings.Split(string(data), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

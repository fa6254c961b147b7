package api

// Diffoscope reports (issue 8): when a reproduce group is decided "not
// reproducible", the server queues a task of kind KindDiffoscope that
// only a host whose facts define a post hook named DiffoscopeHook can
// lease. The worker runs no sandbox for it: it fetches the differing
// artifacts of the two runs, runs the hook and uploads the report as the
// task's artifact DiffoscopeReport.

// Run kinds (Run.Kind).
const (
	KindJob        = ""           // a run of the job's script
	KindDiffoscope = "diffoscope" // the diffoscope comparison of a group
)

const (
	// DiffoscopeHook is the name of the host's post hook that compares
	// two runs' artifacts.
	DiffoscopeHook = "diffoscope"
	// DiffoscopeReport is the path of the report among the task's
	// artifacts.
	DiffoscopeReport = "diffoscope.txt"
)

// DiffoscopeTask is what a diffoscope task compares: two members of a
// group, and every path whose content is not the same in both (Status
// differs, only-a or only-b, with the sha256 of each side that has it).
type DiffoscopeTask struct {
	Group string         `json:"group"`
	RunA  string         `json:"run_a"`
	RunB  string         `json:"run_b"`
	Files []ArtifactDiff `json:"files"`
}

// GroupReport is the state of an unreproducible group's diffoscope task.
type GroupReport struct {
	Run   string `json:"run"` // the task's run ID
	State string `json:"state"`
	Host  string `json:"host,omitempty"`
	RunA  string `json:"run_a"`
	RunB  string `json:"run_b"`
	// Report is the stored report once the task succeeded: the task's
	// artifact DiffoscopeReport.
	Report *Artifact `json:"report,omitempty"`
	Error  string    `json:"error,omitempty"`
	// NoHost: the task is queued and no enrolled, undrained host defines a
	// post hook named DiffoscopeHook, so it waits for one.
	NoHost bool `json:"no_host,omitempty"`
}

// HasPostHook reports whether facts define a post hook named name.
func (f *Facts) HasPostHook(name string) bool { return f.Hooks[name] == "post" }

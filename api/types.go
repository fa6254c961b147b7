package api

import (
	"encoding/json"
	"slices"
	"time"
)

// Run states.
const (
	StateQueued    = "queued"
	StateLeased    = "leased"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateTimedOut  = "timed-out"
	StateCancelled = "cancelled"
	// StateLost: the lease expired on the last allowed attempt.
	StateLost = "lost"
)

// Terminal reports whether a run in state s will never change again.
func Terminal(s string) bool {
	switch s {
	case StateSucceeded, StateFailed, StateTimedOut, StateCancelled, StateLost, StateSkipped:
		return true
	}
	return false
}

// HTTP headers of the API.
const (
	// HeaderReceived: bytes of a partial blob upload the server holds.
	HeaderReceived = "X-Kiln-Received"
	// Log read headers (GET /v1/runs/{id}/log).
	HeaderLogAttempt = "X-Kiln-Attempt"     // the attempt whose log this is
	HeaderLogSize    = "X-Kiln-Log-Size"    // stored bytes of that attempt's log
	HeaderRunState   = "X-Kiln-Run-State"   // the run's state when read
	HeaderRunAttempt = "X-Kiln-Run-Attempt" // the run's current attempt
	HeaderTruncated  = "X-Kiln-Truncated"   // "1": the console cap was reached
)

// The machine-readable kinds of a failed request (ErrorBody.Code): the
// server answers with them and clients branch on them, so both spell them
// through these names.
const (
	CodeStaleFence   = "stale_fence" // the lease is no longer held with this fence
	CodeLogOffset    = "log_offset"  // a log append at the wrong offset (Length: the log's)
	CodeBlobOffset   = "blob_offset" // a blob upload at the wrong offset (Length: received)
	CodeBlobDigest   = "blob_digest" // an uploaded blob does not match its digest
	CodeNotFound     = "not_found"
	CodeExists       = "exists"
	CodeFinished     = "finished" // the run already ended
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeTooLarge     = "too_large"
	CodeRateLimited  = "rate_limited"
	// CodeQueueFull (429, no Retry-After): the owner has max_queued runs
	// queued; the message names the limit.
	CodeQueueFull   = "queue_full"
	CodeUnavailable = "unavailable" // the database is unavailable: retry
	CodeInternal    = "internal"
	// CodeNotReproducible: a group attestation was asked of a group whose
	// verdict is not (yet) reproducible.
	CodeNotReproducible = "not_reproducible"
)

// ErrorBody is the JSON answer of every failed request.
type ErrorBody struct {
	Error string `json:"error"`
	// Code is a machine-readable kind, one of the Code* constants.
	Code string `json:"code,omitempty"`
	// Length is the server's current log length (log_offset) or the bytes
	// received of a partial blob (blob_offset), to resume from.
	Length *int64 `json:"length,omitempty"`
}

// JobInfo is a stored job.
type JobInfo struct {
	Job      Job `json:"job"`
	Revision int `json:"revision"`
	// Owner is who may see and change the job, its runs and artifacts
	// (and admins): "admin", "token:NAME" or "group:NAME".
	Owner    string    `json:"owner,omitempty"`
	Schedule string    `json:"schedule,omitempty"`
	NextFire time.Time `json:"next_fire,omitzero"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// ScheduleRequest sets a job's schedule: a 5-field cron expression,
// @hourly, @daily, @weekly, or @every DURATION.
type ScheduleRequest struct {
	Schedule string `json:"schedule"`
}

// Run is one execution of a job. A lost lease requeues the run as a new
// attempt; ID stays.
type Run struct {
	ID           string     `json:"id"`
	Job          string     `json:"job"`
	Revision     int        `json:"revision"`
	State        string     `json:"state"`
	Attempt      int        `json:"attempt"`
	Trigger      string     `json:"trigger"` // "execute" | "schedule" | "verdict" (a diffoscope task)
	Host         string     `json:"host,omitempty"`
	Created      time.Time  `json:"created"`
	Leased       time.Time  `json:"leased,omitzero"` // when the current attempt was leased
	Started      time.Time  `json:"started,omitzero"`
	Finished     time.Time  `json:"finished,omitzero"`
	CancelAsked  bool       `json:"cancel_requested,omitempty"`
	ExitCode     *int       `json:"exit_code,omitempty"`
	Signal       string     `json:"signal,omitempty"`
	TimedOut     bool       `json:"timed_out,omitempty"`
	Error        string     `json:"error,omitempty"`
	LogSize      int64      `json:"log_size"`
	LogTruncated bool       `json:"log_truncated,omitempty"`
	Artifacts    []Artifact `json:"artifacts,omitempty"`
	// Checks are the host's post and cleanup hooks that ran (pre hooks
	// too), as the worker reported them.
	Checks []Check `json:"checks,omitempty"`
	// Snapshot is the image snapshot ("image@version") the host resolved.
	Snapshot string `json:"snapshot,omitempty"`
	// Image and ImageDigest name the server-held image version the run
	// was pinned to at execute (NAME@VERSION and its TarDigest; every
	// member of a reproduce group has the same). Empty for a host-local
	// image.
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// Phase says what a leased run's host is doing before its script
	// starts, e.g. "fetching image bookworm@3 (212 MiB)" (SetRunPhase);
	// empty otherwise.
	Phase string `json:"phase,omitempty"`
	// HostFacts is a copy of the facts the host sent when it leased the
	// run, so that a run keeps the picture of the host it ran on.
	HostFacts *Facts `json:"host_facts,omitempty"`
	// Group is the reproduce group the run is a member of ("" for none);
	// Member is its index in the group, 0 being the baseline.
	Group  string `json:"group,omitempty"`
	Member int    `json:"member,omitempty"`
	// Variations are the environment differences the run was given as a
	// group member (see Variation*); empty for a run outside a group.
	Variations map[string]string `json:"variations,omitempty"`
	// Kind is KindJob for a run of the job's script, KindDiffoscope for a
	// group's diffoscope task (its Diffoscope says what it compares).
	Kind       string          `json:"kind,omitempty"`
	Diffoscope *DiffoscopeTask `json:"diffoscope,omitempty"`
	// Priority orders the runs of one owner (the job's, or the execute's
	// --priority).
	Priority int `json:"priority,omitempty"`
	// Waiting says why a queued run has not been leased, as the server
	// sees its enrolled hosts now: "for a free slot on h1, h2", "no
	// enrolled host allows memory=64GiB (max 16GiB)", "no enrolled host can
	// run it (h1: has no image x)", ... (GET /v1/runs/{id} only).
	Waiting string `json:"waiting,omitempty"`

	// Key identifies what the run builds (job revision, inputs, image and
	// the keys of the runs it needs): two runs with one key built the
	// same thing. Needs are the runs it builds on (GET /v1/runs/{id}
	// only). Reused is set on an execute's answer that is an existing
	// run with a matching key (execute --reuse), nothing queued.
	Key    string    `json:"key,omitempty"`
	Needs  []RunNeed `json:"needs,omitempty"`
	Reused bool      `json:"reused,omitempty"`
	// Notifications are the deliveries of the run's events to
	// [[notify]] receivers (GET /v1/runs/{id} only; docs/webhooks.md).
	Notifications []Notification `json:"notifications,omitempty"`
	// Kept: `kiln run keep` keeps the run whatever the retention rules
	// say (GET /v1/runs/{id} only; docs/retention.md).
	Kept bool `json:"kept,omitempty"`
	// Publications say where the run's packages were published, or why
	// they were refused (GET /v1/runs/{id} only; docs/publishing.md).
	Publications []Publication `json:"publications,omitempty"`
}

// Check is the outcome of one host-defined hook of a run.
type Check struct {
	Name  string `json:"name"`
	Stage string `json:"stage"` // pre | post | cleanup
	// ExitCode is the hook's exit status; -1 when it did not exit by itself.
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"` // empty: the hook succeeded
}

// Failed reports whether the hook failed.
func (c Check) Failed() bool { return c.Error != "" }

// Variation keys of Run.Variations and Assignment.Variations. Env keys
// (TZ, LANG, LC_ALL, SOURCE_DATE_EPOCH) are the variable names themselves.
const (
	VariationUmask    = "umask"    // octal, e.g. "022"
	VariationUser     = "user"     // "uid[:gid]" the job runs as
	VariationCwd      = "cwd"      // working directory under /work
	VariationHostname = "hostname" // the sandbox's hostname
	// VariationCPUs is how many CPUs the sandbox may use and sees (cpuset,
	// nproc); absent: all of the host's.
	VariationCPUs = "cpus"
	// VariationDomain is the sandbox's NIS domain name (domainname(1)).
	VariationDomain = "domain"
	// VariationHome is the job's $HOME, a path below /home made for it.
	VariationHome = "home"
	// VariationShell names what /bin/sh is: "dash" or "bash" (/bin/<name>
	// of the image, when it has one).
	VariationShell = "shell"
	// VariationASLR is "off" when the job runs without address-space
	// randomisation (personality ADDR_NO_RANDOMIZE); absent: the host's.
	VariationASLR = "aslr"
	// VariationKernel is "uname26" when uname(2) reports the kernel as
	// 2.6.(60+minor) (personality UNAME26); absent: the host's kernel.
	VariationKernel = "kernel"
	// VariationUserGroup is "USER:GROUP", the names the job's uid and gid
	// have in the clone's /etc/passwd and /etc/group; absent: the image's.
	VariationUserGroup = "user_group"
	// VariationTime is the offset the member's clock runs ahead, in
	// libfaketime's form ("+398d"); absent: the host's clock.
	VariationTime = "time"
	// VariationKept lists, comma-separated, the named variations
	// (VariationNames) the job turned off ([reproduce] vary / keep).
	VariationKept = "kept"
)

// VariationNames are the variations a reproduce group applies, by the
// names a job's [reproduce] vary and keep use. Each is on for every
// member after the first unless the job turns it off, and unless the
// job's isolation tier cannot give it (VariationTiers).
var VariationNames = []string{
	"timezone",   // TZ
	"locale",     // LANG, LC_ALL
	"umask",      // VariationUmask
	"user",       // VariationUser (uid and gid)
	"build_path", // VariationCwd
	"hostname",   // VariationHostname
	"cpus",       // VariationCPUs
	"domain",     // VariationDomain
	"home",       // VariationHome
	"shell",      // VariationShell
	"aslr",       // VariationASLR
	"kernel",     // VariationKernel
	"user_group", // VariationUserGroup
	"time",       // VariationTime
}

// VariationTiers are the isolation tiers that can give each named
// variation whose application is not tier-independent (env, the files of
// the clone and the process's user are: every tier has them); a group of
// a job on another tier does not vary it. docs/reproducibility.md.
var VariationTiers = map[string][]string{
	"cpus":   {IsolationContainer},
	"domain": {IsolationContainer},
	"aslr":   {IsolationContainer},
	"kernel": {IsolationContainer},
	"time":   {IsolationContainer},
}

// VariationEnv are the variation keys the worker sets as environment
// variables. They override the job's own env of the same name: varying
// them is the point of a reproduce group.
var VariationEnv = []string{"TZ", "LANG", "LC_ALL", "SOURCE_DATE_EPOCH"}

// ExecuteRequest is the optional body of POST /v1/jobs/{name}/runs.
type ExecuteRequest struct {
	// Reproduce > 1 makes a group of that many runs (overriding the job's
	// reproduce); 0 takes the job's own.
	Reproduce int `json:"reproduce,omitempty"`
	// Priority, when set, replaces the job's priority for the runs
	// queued. Above the server's priority_ceiling only an admin may.
	Priority *int `json:"priority,omitempty"`
	// Reuse answers with the latest successful run of the job whose key
	// matches (Run.Reused) instead of queueing one, when there is one.
	Reuse bool `json:"reuse,omitempty"`
}

// Group is a set of runs of one job revision meant to give identical
// artifacts: each member runs on its own host where possible, under
// varied environment, with the same SOURCE_DATE_EPOCH.
type Group struct {
	ID              string    `json:"id"`
	Job             string    `json:"job"`
	Revision        int       `json:"revision"`
	Size            int       `json:"size"`
	Created         time.Time `json:"created"`
	SourceDateEpoch int64     `json:"source_date_epoch"`
	Members         []Run     `json:"members"`
	// Verdict is set once every member has ended.
	Verdict *Verdict `json:"verdict,omitempty"`
	// Report is set when the verdict queued a diffoscope task: the group
	// is not reproducible and two succeeded members differ.
	Report *GroupReport `json:"report,omitempty"`
	// Publications say where the group's packages were published.
	Publications []Publication `json:"publications,omitempty"`
}

// Verdict is the comparison of a finished group's artifacts.
type Verdict struct {
	// Reproducible: every member succeeded and all have the same artifact
	// paths with the same sha256 each.
	Reproducible bool `json:"reproducible"`
	// SameHost: at least two members ran on the same host (no distinct
	// host was free within the server's reproduce_wait).
	SameHost bool `json:"same_host,omitempty"`
	// Failed names members that did not succeed.
	Failed []string `json:"failed,omitempty"`
	// Differs are paths present in every member whose sha256 differ.
	Differs []string `json:"differs,omitempty"`
	// Missing are paths some members have and others lack.
	Missing []MissingArtifact `json:"missing,omitempty"`
	Decided time.Time         `json:"decided"`
}

// MissingArtifact is a path that some members of a group lack.
type MissingArtifact struct {
	Path      string   `json:"path"`
	MissingIn []string `json:"missing_in"` // run IDs
}

// ArtifactRef is one run's file with a given content (GET /v1/artifacts).
type ArtifactRef struct {
	Run      string    `json:"run"`
	Job      string    `json:"job"`
	Revision int       `json:"revision"`
	Path     string    `json:"path"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	Created  time.Time `json:"created"` // of the run
}

// Artifact is one file a run left under /out.
type Artifact struct {
	Path   string `json:"path"` // relative to /out, slash-separated, clean, no ".."
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"` // permission bits
	SHA256 string `json:"sha256"`
}

// BlobStatus answers a blob upload.
type BlobStatus struct {
	SHA256   string `json:"sha256"`
	Received int64  `json:"received"`
	Complete bool   `json:"complete"`
}

// EnrollmentTokenRequest asks for a single-use enrollment token. Labels are
// given to the host that enrolls with it.
type EnrollmentTokenRequest struct {
	Labels map[string]string `json:"labels,omitempty"`
	TTL    Duration          `json:"ttl,omitempty"` // default: the server's enrollment_ttl
}

// EnrollmentToken is the token, shown once.
type EnrollmentToken struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// Host is an enrolled worker host.
type Host struct {
	Name     string            `json:"name"`
	Labels   map[string]string `json:"labels,omitempty"`
	Facts    Facts             `json:"facts"`
	Created  time.Time         `json:"created"`
	LastSeen time.Time         `json:"last_seen"`
	Drained  bool              `json:"drained,omitempty"`
	Leases   int               `json:"leases"`
	// KeyID is the fingerprint of the host's signing key ("" for a host
	// enrolled without one); see HostKey.
	KeyID string `json:"key_id,omitempty"`
}

// HostKey is a host's provenance signing key (GET /v1/hosts/keys, `kiln
// host keys`). A removed host's key is kept, Revoked set to the time of
// removal: it still verifies runs that finished before.
type HostKey struct {
	Host      string    `json:"host"`
	KeyID     string    `json:"key_id"`     // SHA256 fingerprint of its SSH encoding
	PublicKey string    `json:"public_key"` // PKIX PEM, ed25519
	Created   time.Time `json:"created"`
	Revoked   time.Time `json:"revoked,omitzero"`
}

// GroupAttestation is the attestation of a reproducible group (GET
// /v1/groups/{id}/attestation): each member's envelope, from distinct
// hosts, over identical subjects.
type GroupAttestation struct {
	Group    string           `json:"group"`
	Job      string           `json:"job"`
	Revision int              `json:"revision"`
	Members  []RunAttestation `json:"members"`
	// Varied names the variations (VariationNames) the group's members
	// differed in: what the reproducible verdict covers. Each member's
	// own envelope carries its signed values.
	Varied []string `json:"varied"`
}

// RunAttestation is one run's DSSE envelope and the host that sent it.
type RunAttestation struct {
	Run      string          `json:"run"`
	Host     string          `json:"host"`
	Envelope json.RawMessage `json:"envelope"`
}

// Facts describe what a host can run, sent on enroll, heartbeat and lease.
type Facts struct {
	OS   string `json:"os"`   // "linux" | "freebsd"
	Arch string `json:"arch"` // GOARCH-style: amd64, arm64, ...
	// EmulatedArchs can run through qemu-user (binfmt F flag).
	EmulatedArchs []string    `json:"emulated_archs,omitempty"`
	Images        []ImageFact `json:"images,omitempty"`
	// FleetImages are the TarDigests of the server-held image versions
	// the host has as snapshots (docs/images.md): the server prefers such
	// a host for a run pinned to one of them.
	FleetImages []string          `json:"fleet_images,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Slots       int               `json:"slots"`
	FreeSlots   int               `json:"free_slots"`
	Version     string            `json:"version,omitempty"`
	// Details are descriptive host facts (kernel, distro, cpus, memory,
	// storage, containerd version, ...; see worker.HostFacts). The server
	// stores them but never matches on them.
	Details map[string]string `json:"details,omitempty"`
	// Hooks are the hooks the host's admin defined, name -> stage. The
	// server leases a diffoscope task only to a host with a post hook
	// named DiffoscopeHook.
	Hooks map[string]string `json:"hooks,omitempty"`
	// Limits are the host's maxima for one run ([limits] *_max of its
	// worker.toml; a zero field: no maximum). The server leases a job
	// that asks for more (api.Limits.Over) to no host of this kind.
	Limits Limits `json:"limits,omitzero"`
	// Isolations are the Job.Isolation values the host can run. A host
	// that sends no list (absent or null: an older worker) offers
	// containers only; an empty list says it can run nothing (neither
	// containerd nor qemu usable), and no run is leased to it. See
	// OfferedIsolations.
	Isolations []string `json:"isolations"`
	// Networks are the network modes the host offers besides "none",
	// which every host offers: "bridge" where its CNI plugins are in
	// place, "host" where its admin allows it. The server leases a job
	// only to a host that offers the job's mode.
	Networks []string `json:"networks,omitempty"`
	// Caches are the names of the host's caches (worker.toml
	// [caches.NAME]). The server leases a job only to a host that has
	// every cache the job names.
	Caches []string `json:"caches,omitempty"`
}

// OfferedIsolations is what the host runs: Isolations, or containers only
// for a host that sent no list.
func (f *Facts) OfferedIsolations() []string {
	if f.Isolations == nil {
		return []string{IsolationContainer}
	}
	return f.Isolations
}

// OffersNetwork reports whether the host runs jobs of network mode m
// (api.Network.Mode()).
func (f *Facts) OffersNetwork(m string) bool {
	return m == NetworkNone || slices.Contains(f.Networks, m)
}

// ImageFact is one image present on a host. A job's image "NAME" matches
// an ImageFact of that Name with at least one version; "NAME@VERSION" needs
// that version. When both the job and the ImageFact name an arch they must
// agree.
type ImageFact struct {
	Name     string   `json:"name"`
	Arch     string   `json:"arch,omitempty"`
	Versions []string `json:"versions,omitempty"` // snapshot versions present
}

// EnrollRequest is sent with an enrollment token. Name is optional (the
// server picks one); a taken name is refused with 409.
type EnrollRequest struct {
	Name  string `json:"name,omitempty"`
	Facts Facts  `json:"facts"`
	// SigningKey is the host's provenance public key (PKIX PEM,
	// ed25519), made at enroll; absent from older workers.
	SigningKey string `json:"signing_key,omitempty"`
}

// EnrollResponse carries the worker's own credential, shown once. Labels
// are the host's labels: those of the enrollment token merged with those
// the host asked for (Facts.Labels of the EnrollRequest). Where both name a
// key with different values the token's value wins, and LabelConflicts
// holds the host's refused value by key.
type EnrollResponse struct {
	Name           string            `json:"name"`
	Token          string            `json:"token"`
	Labels         map[string]string `json:"labels,omitempty"`
	LabelConflicts map[string]string `json:"label_conflicts,omitempty"`
	// ServerID is the server's identity (made at its first start). The
	// worker records it and refuses assignments that carry another.
	ServerID string `json:"server_id"`
}

// LeaseRef names a lease the worker holds.
type LeaseRef struct {
	RunID string `json:"run_id"`
	Fence string `json:"fence"`
}

// HeartbeatRequest refreshes the host's facts and renews its leases.
type HeartbeatRequest struct {
	Facts  Facts      `json:"facts"`
	Leases []LeaseRef `json:"leases,omitempty"`
}

// HeartbeatResponse: Renewed leases run on until Expires; the runs in Cancel
// must be stopped and reported (they end as cancelled); the runs in Revoked
// are no longer this worker's (expired and moved, or removed): stop them
// and report nothing.
type HeartbeatResponse struct {
	Renewed []LeaseRef `json:"renewed,omitempty"`
	Expires time.Time  `json:"expires"`
	Cancel  []string   `json:"cancel,omitempty"`
	Revoked []string   `json:"revoked,omitempty"`
	Drained bool       `json:"drained,omitempty"`
	// ServerID is the server's identity, as in EnrollResponse (lets a
	// worker enrolled before servers had one learn it).
	ServerID string `json:"server_id,omitempty"`
}

// LeaseRequest long-polls for one run. Wait bounds the poll (server caps
// it); zero asks without waiting.
type LeaseRequest struct {
	Facts Facts    `json:"facts"`
	Wait  Duration `json:"wait,omitempty"`
}

// Assignment is a leased run: everything the worker needs to run it. Fence
// must accompany every log append, blob upload and the result.
type Assignment struct {
	// ServerID is the identity of the server that leased the run; the
	// worker refuses an assignment from a server it did not enroll with.
	ServerID string `json:"server_id"`
	RunID    string `json:"run_id"`
	// Owner is an opaque key of the job's owner (CacheOwner): a host keeps
	// a tree of each cache per owner, so that one owner's runs never
	// read what another's left. Empty from a server older than it: such
	// a run may name only shared caches.
	Owner    string    `json:"owner,omitempty"`
	Job      Job       `json:"job"`
	Revision int       `json:"revision"`
	Attempt  int       `json:"attempt"`
	Fence    string    `json:"fence"`
	Expires  time.Time `json:"expires"` // renew with heartbeats before this
	// LogOffset is where this attempt's console continues. Every lease
	// starts a new attempt today, so it is 0; the field lets a future
	// server hand a lease back to the same worker mid-log.
	LogOffset int64 `json:"log_offset"`
	// Group, Member and Variations: see Run. The worker applies the
	// variations to the sandbox.
	Group      string            `json:"group,omitempty"`
	Member     int               `json:"member,omitempty"`
	Variations map[string]string `json:"variations,omitempty"`
	// Diffoscope, when set, makes this a diffoscope task instead of a run
	// of Job's script: the worker starts no sandbox, runs its diffoscope
	// hook on the two runs' files and uploads the report as the artifact
	// DiffoscopeReport.
	Diffoscope *DiffoscopeTask `json:"diffoscope,omitempty"`
	// Image, when set, is the server-held image version the run must use
	// (docs/images.md): the host runs on the snapshot of exactly this
	// TarDigest, fetching Blob first if it lacks it. Nil means the job's
	// image is one of the host's own (ImageFact).
	Image *ImageVersion `json:"image,omitempty"`
	// Needs are the artifacts of the runs the job needs that its
	// [[needs]] globs select, placed at /in/needs/<job>/<path>.
	Needs []NeededArtifact `json:"needs,omitempty"`
}

// LogAppendResponse gives the log length after the append.
type LogAppendResponse struct {
	Length int64 `json:"length"`
}

// ResultRequest reports how a run ended. Artifacts must have been uploaded
// (by sha256) before.
type ResultRequest struct {
	Fence     string     `json:"fence"`
	ExitCode  int        `json:"exit_code"`
	Signal    string     `json:"signal,omitempty"`
	TimedOut  bool       `json:"timed_out,omitempty"`
	Error     string     `json:"error,omitempty"` // infrastructure failure text
	Artifacts []Artifact `json:"artifacts,omitempty"`
	Checks    []Check    `json:"checks,omitempty"`
	Snapshot  string     `json:"snapshot,omitempty"` // the snapshot the host resolved
	// Attestation is the DSSE envelope of the run's provenance, signed
	// with the host's key (docs/publishing.md); absent when the run left
	// no artifacts or the host has no key.
	Attestation json.RawMessage `json:"attestation,omitempty"`
}

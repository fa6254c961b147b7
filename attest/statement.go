package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	slsa "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita1 "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-build/kiln/api"
)

// Formats of the envelope and its statement.
const (
	// PayloadType is the DSSE payload type of an in-toto statement.
	PayloadType = "application/vnd.in-toto+json"
	// StatementType is in-toto Statement v1.
	StatementType = "https://in-toto.io/Statement/v1"
	// PredicateType is SLSA Provenance v1.
	PredicateType = "https://slsa.dev/provenance/v1"
	// BuildType names kiln's externalParameters/internalParameters
	// layout (docs/publishing.md).
	BuildType = "https://github.com/kiln-build/kiln/blob/main/docs/publishing.md#build-type-v1"
	// BuilderPrefix + host name is the builder.id of a run's provenance.
	BuilderPrefix = "https://github.com/kiln-build/kiln/blob/main/docs/publishing.md#host="
)

// HostFactKeys are the host facts (api.Facts.Details) a statement
// carries: those that can change what a build produces. Volatile ones
// (free space, memory) are left out.
var HostFactKeys = []string{"kernel", "distro", "distro_version", "launcher", "containerd", "runc", "runsc", "qemu", "qemu_user", "vm", "kvm", "seccomp", "apparmor"}

// Run is what a worker knows of a finished run; Statement turns it into
// provenance.
type Run struct {
	ServerID string
	RunID    string
	Attempt  int
	Host     string
	Version  string // the worker's kiln version
	Job      api.Job
	Revision int
	// Snapshot is the image snapshot the host resolved ("name@version").
	// Images are host-local: it is the snapshot's identity on this host,
	// not a content digest.
	Snapshot string
	// Image and ImageDigest name the server-held image version the run
	// was pinned to (NAME@VERSION and "sha256:<hex>" of its tar), from
	// the assignment; empty for a host-local image, which only has
	// Snapshot.
	Image       string
	ImageDigest string
	Arch        string
	Isolation   string
	Variations  map[string]string
	Group       string
	Member      int
	// HostFacts are the host's descriptive facts; HostFactKeys of them
	// are recorded.
	HostFacts         map[string]string
	Started, Finished time.Time
	Artifacts         []api.Artifact
}

// Statement is the in-toto Statement v1 (JSON) about r: its subjects are
// r's artifacts, its predicate a SLSA Provenance v1.
func Statement(r *Run) ([]byte, error) {
	if len(r.Artifacts) == 0 {
		return nil, fmt.Errorf("run %s: no artifacts to attest", r.RunID)
	}
	subjects := make([]*ita1.ResourceDescriptor, 0, len(r.Artifacts))
	for _, a := range r.Artifacts {
		subjects = append(subjects, &ita1.ResourceDescriptor{Name: a.Path, Digest: map[string]string{"sha256": a.SHA256}})
	}
	script := sha256.Sum256([]byte(r.Job.Script))
	ext := map[string]any{
		"job":           r.Job.Name,
		"revision":      r.Revision,
		"script_sha256": hex.EncodeToString(script[:]),
		"image":         r.Job.Image,
		"isolation":     orDefault(r.Isolation, api.IsolationContainer),
		"arch":          r.Arch,
	}
	if len(r.Variations) > 0 {
		ext["variations"] = stringMap(r.Variations)
	}
	if r.Group != "" {
		ext["group"] = r.Group
		ext["member"] = r.Member
	}
	facts := map[string]string{}
	for _, k := range HostFactKeys {
		if v, ok := r.HostFacts[k]; ok {
			facts[k] = v
		}
	}
	internal := map[string]any{
		"server_id":  r.ServerID,
		"attempt":    r.Attempt,
		"host_facts": stringMap(facts),
	}
	deps := []*ita1.ResourceDescriptor{{
		// Host-local image: its name and the snapshot identity on this
		// host; there is no content digest to give.
		Name: "image:" + r.Job.Image,
		Uri:  "kiln-snapshot:" + r.Snapshot,
	}}
	if algo, hex, ok := strings.Cut(r.ImageDigest, ":"); ok && r.Image != "" {
		// A server-held image version: its tar's digest names the tree.
		deps[0] = &ita1.ResourceDescriptor{Name: "image:" + r.Image, Uri: "kiln-snapshot:" + r.Snapshot, Digest: map[string]string{algo: hex}}
	}
	for _, in := range r.Job.Inputs {
		deps = append(deps, &ita1.ResourceDescriptor{Name: in.Path, Digest: map[string]string{"sha256": in.SHA256}})
	}
	extS, err := structpb.NewStruct(ext)
	if err != nil {
		return nil, err
	}
	intS, err := structpb.NewStruct(internal)
	if err != nil {
		return nil, err
	}
	prov := &slsa.Provenance{
		BuildDefinition: &slsa.BuildDefinition{
			BuildType:            BuildType,
			ExternalParameters:   extS,
			InternalParameters:   intS,
			ResolvedDependencies: deps,
		},
		RunDetails: &slsa.RunDetails{
			Builder: &slsa.Builder{Id: BuilderPrefix + r.Host, Version: map[string]string{"kiln": orDefault(r.Version, "unknown")}},
			Metadata: &slsa.BuildMetadata{
				InvocationId: r.ServerID + "/" + r.RunID,
				StartedOn:    timestamppb.New(r.Started),
				FinishedOn:   timestamppb.New(r.Finished),
			},
		},
	}
	if err := prov.Validate(); err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	pj, err := protojson.Marshal(prov)
	if err != nil {
		return nil, err
	}
	pred := &structpb.Struct{}
	if err := protojson.Unmarshal(pj, pred); err != nil {
		return nil, err
	}
	st := &ita1.Statement{Type: StatementType, Subject: subjects, PredicateType: PredicateType, Predicate: pred}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("statement: %w", err)
	}
	return protojson.Marshal(st)
}

// ParsedStatement is what a verifier reads from a statement.
type ParsedStatement struct {
	Subjects []api.Artifact // Path and SHA256 only
	Builder  string
	// RunID is the invocation id ("SERVERID/RUNID").
	RunID    string
	Finished time.Time
}

// ParseStatement decodes and validates an in-toto Statement v1 with a
// SLSA Provenance v1 predicate.
func ParseStatement(payload []byte) (*ParsedStatement, error) {
	var st ita1.Statement
	if err := protojson.Unmarshal(payload, &st); err != nil {
		return nil, fmt.Errorf("statement: %w", err)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("statement: %w", err)
	}
	if st.Type != StatementType || st.PredicateType != PredicateType {
		return nil, fmt.Errorf("statement: type %q predicate %q, want %q and %q", st.Type, st.PredicateType, StatementType, PredicateType)
	}
	pj, err := protojson.Marshal(st.Predicate)
	if err != nil {
		return nil, err
	}
	var prov slsa.Provenance
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(pj, &prov); err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	if err := prov.Validate(); err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	p := &ParsedStatement{
		Builder: prov.GetRunDetails().GetBuilder().GetId(),
		RunID:   prov.GetRunDetails().GetMetadata().GetInvocationId(),
	}
	if f := prov.GetRunDetails().GetMetadata().GetFinishedOn(); f != nil {
		p.Finished = f.AsTime()
	}
	for _, s := range st.Subject {
		p.Subjects = append(p.Subjects, api.Artifact{Path: s.Name, SHA256: s.Digest["sha256"]})
	}
	return p, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// stringMap makes m a map structpb takes.
func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

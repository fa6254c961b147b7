package runreq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// snapshots stands in for the image manager (a map of ref to snapshot and
// arch): Request only passes the ref on and uses what comes back.
type snapshots map[string][2]string

func (s snapshots) Resolve(_ context.Context, ref string) (string, string, error) {
	if v, ok := s[ref]; ok {
		return v[0], v[1], nil
	}
	return "", "", fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

var (
	pre     = sandbox.Hook{Name: "gate", Stage: sandbox.StagePre, Command: []string{"/bin/true"}}
	post    = sandbox.Hook{Name: "scan", Stage: sandbox.StagePost, Command: []string{"/bin/true"}}
	cleanup = sandbox.Hook{Name: "wipe", Stage: sandbox.StageCleanup, Command: []string{"/bin/true"}}
	ccache  = cache.Def{Name: "ccache", Dir: "/var/cache/kiln/ccache", Target: "/root/.ccache"}
	policy  = Policy{
		Hooks:     map[string]sandbox.Hook{"gate": pre, "scan": post, "wipe": cleanup},
		HostTools: map[string]string{"go": "/usr/local/go", "rust": "/opt/rust"},
		Caches:    map[string]cache.Def{"ccache": ccache},
		Defaults:  api.Limits{Memory: 2 << 30, CPUs: 2, Pids: 4096, Timeout: api.Duration(time.Hour), Disk: 10 << 30},
		Max:       api.Limits{Memory: 8 << 30, Disk: 20 << 30},
		Config:    "/etc/kiln/worker.toml",
	}
	images = snapshots{"deb": {"deb@3", "amd64"}, "deb@2": {"deb@2", "amd64"}}
	inputs = []sandbox.InputFile{{Path: "src.tar", Source: "/tmp/src.tar", SHA256: "ab"}}
)

// job is a job asking for one of everything; edit changes it for a case.
func job(edit func(j *api.Job)) *api.Job {
	j := &api.Job{Name: "build", Image: "deb", Script: "make", Env: map[string]string{"CC": "gcc", "TZ": "UTC"},
		HostTools: []string{"go"}, Caches: []string{"ccache"}, Artifacts: []string{"*.deb"}, Isolation: "gvisor",
		Hooks: api.Hooks{Pre: []string{"gate"}, Post: []string{"scan"}, Cleanup: []string{"wipe"}}}
	j.Resources.Memory = 4 << 30
	if edit != nil {
		edit(j)
	}
	return j
}

func TestRequest(t *testing.T) {
	full := sandbox.Request{
		RunID: "r1", Job: "build", Attempt: 2, Snapshot: "deb@3", Arch: "amd64", Script: "make",
		Env: map[string]string{"CC": "gcc", "TZ": "UTC"}, Timeout: time.Hour,
		Resources: sandbox.Resources{MemoryBytes: 4 << 30, CPUs: 2, Pids: 4096, DiskBytes: 10 << 30, Network: sandbox.NetworkNone},
		Inputs:    inputs, HostTools: map[string]string{"go": "/usr/local/go"}, Caches: []cache.Def{ccache},
		CacheOwner: "0123456789abcdef0123456789abcdef", Artifacts: []string{"*.deb"}, OutDir: "/staging/r1",
		Console: io.Discard, Hooks: []sandbox.Hook{pre, post, cleanup}, Isolation: "gvisor",
	}
	for _, tc := range []struct {
		name       string
		job        *api.Job
		variations map[string]string
		inputsErr  error
		want       func(r *sandbox.Request) // full, edited; nil: an error
		wantErr    error
		errHas     string
		snapshot   string // on error
		fetched    bool   // on error: inputs were asked for
	}{
		{name: "everything", job: job(nil), want: func(*sandbox.Request) {}},
		{name: "pinned version, network", job: job(func(j *api.Job) {
			j.Image, j.Arch = "deb@2", "amd64"
			j.Resources.Network = api.Network(sandbox.NetworkBridge)
		}), want: func(r *sandbox.Request) { r.Snapshot, r.Network = "deb@2", sandbox.NetworkBridge }},
		{name: "variations", job: job(nil),
			variations: map[string]string{"TZ": "Asia/Tokyo", api.VariationUmask: "002", api.VariationUser: "1000",
				api.VariationCwd: "/work/x", api.VariationHostname: "other", api.VariationCPUs: "2",
				api.VariationDomain: "b.invalid", api.VariationHome: "/home/b", api.VariationShell: "bash", api.VariationKept: "locale",
				api.VariationASLR: "off", api.VariationKernel: "uname26", api.VariationUserGroup: "kiln-b:kiln-b-grp"},
			want: func(r *sandbox.Request) {
				r.Env = map[string]string{"CC": "gcc", "TZ": "Asia/Tokyo"}
				r.Umask, r.User, r.Cwd, r.Hostname = "002", "1000", "/work/x", "other"
				r.Vary = sandbox.Variations{CPUs: 2, Domain: "b.invalid", Home: "/home/b", Shell: "bash",
					NoASLR: true, Uname26: true, UserName: "kiln-b", GroupName: "kiln-b-grp"}
			}},
		{name: "over a maximum", job: job(func(j *api.Job) { j.Resources.Memory = 64 << 30 }),
			wantErr: api.ErrOverLimit, errHas: "memory=64GiB (max 8GiB): over the host's limit (see [limits] in /etc/kiln/worker.toml)"},
		{name: "unknown image", job: job(func(j *api.Job) { j.Image = "alpine" }),
			wantErr: errdefs.ErrNotFound, errHas: "image alpine: "},
		{name: "other arch", job: job(func(j *api.Job) { j.Arch = "arm64" }), snapshot: "deb@3",
			wantErr: errdefs.ErrUnsupported, errHas: "job wants arch arm64, image deb@3 is amd64"},
		{name: "undefined hook", job: job(func(j *api.Job) { j.Hooks.Post = []string{"nosuch"} }), snapshot: "deb@3",
			wantErr: errdefs.ErrNotFound, errHas: `"nosuch" is not defined on this host: not found (see [hooks] in /etc/kiln/worker.toml)`},
		{name: "undefined host tool", job: job(func(j *api.Job) { j.HostTools = []string{"java"} }), snapshot: "deb@3",
			wantErr: errdefs.ErrNotFound, errHas: "(see [host_tools] in /etc/kiln/worker.toml)"},
		{name: "undefined cache", job: job(func(j *api.Job) { j.Caches = []string{"npm"} }), snapshot: "deb@3",
			wantErr: errdefs.ErrNotFound, errHas: "(see [caches] in /etc/kiln/worker.toml)"},
		{name: "inputs fail", job: job(nil), inputsErr: sandbox.ErrChecksum, snapshot: "deb@3", fetched: true,
			wantErr: sandbox.ErrChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fetched, cloned := false, false
			run := Run{ID: "r1", Attempt: 2, Job: tc.job, CacheOwner: full.CacheOwner, Variations: tc.variations,
				OutDir: "/staging/r1", Console: io.Discard, Cloned: func() { cloned = true },
				Inputs: func(context.Context) ([]sandbox.InputFile, error) { fetched = true; return inputs, tc.inputsErr }}
			got, err := policy.Request(context.Background(), images, run)
			if tc.want == nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(fmt.Sprint(err), tc.errHas) {
					t.Fatalf("err %v; want %v saying %q", err, tc.wantErr, tc.errHas)
				}
				if got.Snapshot != tc.snapshot || fetched != tc.fetched {
					t.Fatalf("snapshot %q, inputs fetched %v; want %q, %v", got.Snapshot, fetched, tc.snapshot, tc.fetched)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := full
			tc.want(&want)
			if got.Cloned == nil {
				t.Fatal("Cloned not passed on")
			}
			got.Cloned()
			got.Cloned = nil
			if !cloned || !reflect.DeepEqual(got, want) {
				t.Fatalf("request\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

// A reattach request carries what the end of the run needs, and neither
// the pre hooks (the sandbox started long ago) nor anything to launch.
func TestReattach(t *testing.T) {
	run := Run{ID: "r1", Attempt: 2, Job: job(nil), OutDir: "/staging/r1", Console: io.Discard}
	got, err := policy.Reattach(run)
	if err != nil {
		t.Fatal(err)
	}
	want := sandbox.Request{RunID: "r1", Job: "build", Attempt: 2, Timeout: time.Hour, Artifacts: []string{"*.deb"},
		OutDir: "/staging/r1", Console: io.Discard, Hooks: []sandbox.Hook{post, cleanup}, Reattach: true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("request\n%+v\nwant\n%+v", got, want)
	}
	run.Job = job(func(j *api.Job) { j.Hooks.Cleanup = []string{"gate"} })
	if _, err := policy.Reattach(run); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("pre hook named as cleanup: %v, want ErrInvalid", err)
	}
}

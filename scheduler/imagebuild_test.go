package scheduler_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestImageBuildSchedule: `kiln image schedule` stores the build job with
// its schedule, which fires a run whose lease carries the build;
// unschedule clears it. The server publishes only a well-formed result:
// a host that sends no artifacts, another arch than asked or a malformed
// manifest fails the run and publishes nothing; a good one publishes
// version 1 with the build's method and recipe.
func TestImageBuildSchedule(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	build := api.ImageBuild{Name: "tiny", Method: "debootstrap", Version: "trixie", Arch: "amd64", Packages: []string{"g++"}}
	ji, err := admin.ScheduleImageBuild(ctx, api.BuildImageRequest{Build: build, Schedule: "@every 1s"})
	if err != nil {
		t.Fatal(err)
	}
	if ji.Job.Name != "image.tiny" || ji.Schedule != "@every 1s" || ji.Job.ImageBuild == nil || ji.Owner != "admin" {
		t.Fatalf("scheduled build job: %+v", ji)
	}
	if _, err := admin.ScheduleImageBuild(ctx, api.BuildImageRequest{Build: build, Schedule: "@every 1ms"}); err == nil || !strings.Contains(err.Error(), "at least 1s") {
		t.Fatalf("a too short schedule: %v", err)
	}

	tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	facts := api.Facts{OS: "linux", Arch: "amd64", Slots: 1, FreeSlots: 1}
	enrolled, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: "builder", Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	host := srv.ClientWith(enrolled.Token)
	lease := func() *api.Assignment {
		t.Helper()
		for range 30 {
			a, err := host.Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(5 * time.Second)})
			if err != nil {
				t.Fatal(err)
			}
			if a != nil {
				if err := a.Validate(); err != nil {
					t.Fatalf("the lease of a build is not valid for a worker: %v", err)
				}
				return a
			}
		}
		t.Fatal("no run leased")
		return nil
	}
	a := lease()
	if b := a.Job.ImageBuild; b == nil || b.Name != "tiny" || b.Method != "debootstrap" || b.Version != "trixie" || a.Job.Image != "" {
		t.Fatalf("lease of the scheduled build: %+v", a.Job)
	}
	if r, err := admin.GetRun(ctx, a.RunID); err != nil || r.Trigger != "schedule" {
		t.Fatalf("scheduled run: %+v %v", r, err)
	}
	if ji, err = admin.ScheduleImageBuild(ctx, api.BuildImageRequest{Build: api.ImageBuild{Name: "tiny"}}); err != nil || ji.Schedule != "" {
		t.Fatalf("unschedule: %+v %v", ji, err)
	}

	upload := func(a *api.Assignment, path string, b []byte) api.Artifact {
		t.Helper()
		h := sha256.Sum256(b)
		s := hex.EncodeToString(h[:])
		if err := host.UploadArtifact(ctx, a.RunID, a.Fence, s, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
		return api.Artifact{Path: path, Size: int64(len(b)), Mode: 0o644, SHA256: s}
	}
	td := sha256.Sum256([]byte("the tar"))
	good := api.ImageBuilt{Arch: "amd64", OS: "linux", TarDigest: "sha256:" + hex.EncodeToString(td[:]), TarSize: 10240}
	manifest := func(change func(*api.ImageBuilt)) []byte {
		m := good
		change(&m)
		b, _ := json.Marshal(m)
		return b
	}
	for i, tc := range []struct {
		name      string
		artifacts func(a *api.Assignment) []api.Artifact
		want      string // in the run's error; "": succeeds
	}{
		{"no artifacts", func(*api.Assignment) []api.Artifact { return nil }, "sent no image.tar.zst and image.json artifacts"},
		{"another arch", func(a *api.Assignment) []api.Artifact {
			return []api.Artifact{upload(a, api.ImageBuildBlob, []byte("zstd")), upload(a, api.ImageBuildManifest, manifest(func(m *api.ImageBuilt) { m.Arch = "arm64" }))}
		}, "the build asked for arch amd64, the host built arm64"},
		{"another os", func(a *api.Assignment) []api.Artifact {
			return []api.Artifact{upload(a, api.ImageBuildBlob, []byte("zstd")), upload(a, api.ImageBuildManifest, manifest(func(m *api.ImageBuilt) { m.OS = "freebsd" }))}
		}, "method debootstrap makes linux images, the host says freebsd"},
		{"bad digest", func(a *api.Assignment) []api.Artifact {
			return []api.Artifact{upload(a, api.ImageBuildBlob, []byte("zstd")), upload(a, api.ImageBuildManifest, manifest(func(m *api.ImageBuilt) { m.TarDigest = "md5:x" }))}
		}, `tar_digest "md5:x"`},
		{"not json", func(a *api.Assignment) []api.Artifact {
			return []api.Artifact{upload(a, api.ImageBuildBlob, []byte("zstd")), upload(a, api.ImageBuildManifest, []byte(`{"arch":"amd64","evil":1}`))}
		}, `unknown field "evil"`},
		{"good", func(a *api.Assignment) []api.Artifact {
			return []api.Artifact{upload(a, api.ImageBuildBlob, []byte("zstd")), upload(a, api.ImageBuildManifest, manifest(func(*api.ImageBuilt) {}))}
		}, ""},
	} {
		if i > 0 {
			if _, err := admin.BuildImage(ctx, api.BuildImageRequest{Build: build}); err != nil {
				t.Fatal(err)
			}
			a = lease()
		}
		run, err := host.ReportResult(ctx, a.RunID, api.ResultRequest{Fence: a.Fence, Artifacts: tc.artifacts(a)})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		vs, err := admin.ListImageVersions(ctx, "tiny")
		if err != nil {
			t.Fatal(err)
		}
		if tc.want != "" {
			if run.State != api.StateFailed || !strings.Contains(run.Error, tc.want) || len(vs) != 0 {
				t.Fatalf("%s: run %s %q, %d versions; want failed with %q and none published", tc.name, run.State, run.Error, len(vs), tc.want)
			}
			continue
		}
		if run.State != api.StateSucceeded || len(vs) != 1 {
			t.Fatalf("%s: run %s %q, %d versions", tc.name, run.State, run.Error, len(vs))
		}
		if v := vs[0]; v.Version != 1 || v.TarDigest != good.TarDigest || v.Method != "debootstrap" || v.Recipe != "debootstrap trixie packages=g++" || v.BlobSize != 4 {
			t.Fatalf("published %+v", v)
		}
	}

	// A job of the build's name that is not a build is left alone.
	if _, err := admin.AddJob(ctx, &api.Job{Name: "image.other", Image: "tiny", Script: "true"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.BuildImage(ctx, api.BuildImageRequest{Build: api.ImageBuild{Name: "other", Method: "busybox"}}); err == nil || !strings.Contains(err.Error(), "is not the build of image other") {
		t.Fatalf("build over a job: %v", err)
	}
}

// TestImageBuildOn: --on HOST queues the build for that host only: another
// host that fits as well is not given it; a host that is not enrolled is
// refused at once.
func TestImageBuildOn(t *testing.T) {
	srv := testsupport.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	if _, err := admin.BuildImage(ctx, api.BuildImageRequest{Build: api.ImageBuild{Name: "tiny", Method: "busybox", On: "ghost"}}); err == nil || !strings.Contains(err.Error(), `no host "ghost" is enrolled`) {
		t.Fatalf("build on a host that is not enrolled: %v", err)
	}
	facts := api.Facts{OS: "linux", Arch: "amd64", Slots: 1, FreeSlots: 1}
	hosts := map[string]*api.Client{}
	for _, name := range []string{"builder", "other"} {
		tok, err := admin.CreateEnrollmentToken(ctx, api.EnrollmentTokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		e, err := srv.ClientWith(tok.Token).Enroll(ctx, api.EnrollRequest{Name: name, Facts: facts})
		if err != nil {
			t.Fatal(err)
		}
		hosts[name] = srv.ClientWith(e.Token)
	}
	run, err := admin.BuildImage(ctx, api.BuildImageRequest{Build: api.ImageBuild{Name: "tiny", Method: "busybox", On: "builder"}})
	if err != nil {
		t.Fatal(err)
	}
	// The run is queued before either host asks: a host it fits would be
	// given it at once.
	if a, err := hosts["other"].Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(time.Second)}); err != nil || a != nil {
		t.Fatalf("the other host was leased %+v (%v)", a, err)
	}
	a, err := hosts["builder"].Lease(ctx, api.LeaseRequest{Facts: facts, Wait: api.Duration(5 * time.Second)})
	if err != nil || a == nil || a.RunID != run.ID || a.Job.ImageBuild.On != "builder" {
		t.Fatalf("the builder's lease: %+v (%v), want run %s", a, err, run.ID)
	}
}

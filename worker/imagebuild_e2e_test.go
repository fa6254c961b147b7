//go:build linux

package worker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// TestImageBuild drives `kiln image build` through real processes: a
// busybox build on the host labelled for building publishes tiny@1 with
// its method and recipe, leaves no image of its own on the builder but
// keeps the tree as its snapshot of tiny@1 (fetching nothing), and a
// run pinned to tiny@1 on a second, fresh host fetches it; a build that
// fails publishes nothing; a client token may not build; a bad method,
// arch or package is refused before anything is queued, and a job file
// cannot make itself an image build.
func TestImageBuild(t *testing.T) {
	cl := newCluster(t)
	ctx := context.Background()
	builder := cl.addWorker(t, "builder", "role=build", "")
	cl.waitHeartbeats(t, builder.name)

	out, errOut, code := cl.srv.Run("image", "build", "tiny", "-m", "busybox", "--labels", "role=build")
	if code != 0 {
		t.Fatalf("image build: exit %d: %s", code, errOut)
	}
	r := cl.wait(t, strings.TrimSpace(out), 5*time.Minute, finished)
	if r.State != api.StateSucceeded || r.Host != builder.name || r.Job != "image.tiny" {
		t.Fatalf("build run: %s on %s (job %s): %s\nconsole:\n%s", r.State, r.Host, r.Job, r.Error, cl.console(t, r.ID))
	}
	if info, errOut, code := cl.srv.Run("run", "info", r.ID); code != 0 || !strings.Contains(info, "image.tiny") || !strings.Contains(info, builder.name) {
		t.Fatalf("run info of the build: exit %d\n%s%s", code, info, errOut)
	}
	v, err := cl.client().GetImageVersion(ctx, "tiny", 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.Version != 1 || v.Method != "busybox" || v.Recipe != "busybox" || v.OS != "linux" || !strings.HasPrefix(v.TarDigest, "sha256:") {
		t.Fatalf("published %+v, want tiny@1 by busybox", v)
	}
	if !strings.Contains(cl.console(t, r.ID), "[kiln] built linux/"+v.Arch+", tar "+v.TarDigest) {
		t.Fatalf("build console lacks what was built:\n%s", cl.console(t, r.ID))
	}
	if list := builder.host.MustKiln(t, "image", "list"); strings.Contains(list, "kiln-build-") {
		t.Fatalf("the builder kept its build image:\n%s", list)
	}
	// ... but keeps the tree as the fleet snapshot of tiny@1, which its
	// facts report: a run of tiny@1 there would fetch nothing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		vs, err := cl.client().ListImageVersions(ctx, "tiny")
		if err == nil && len(vs) == 1 && strings.Join(vs[0].Hosts, ",") == builder.name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the builder does not hold tiny@1: %+v %v\n%s", vs, err, tail(builder.proc.Log()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if strings.Contains(builder.proc.Log(), "fetching image") {
		t.Fatalf("the builder fetched what it built")
	}

	// A fresh host runs a job on the built image: it fetches tiny@1.
	runner := cl.addWorker(t, "runner", "role=run", "")
	cl.waitHeartbeats(t, runner.name)
	job := cl.addJob(t, `name = "on-tiny"
image = "tiny"
script = "busybox true"
[constraints]
labels = { role = "run" }
`)
	r = cl.wait(t, cl.execute(t, job), 5*time.Minute, finished)
	if r.State != api.StateSucceeded || r.Host != runner.name || r.Image != "tiny@1" || r.ImageDigest != v.TarDigest {
		t.Fatalf("run on tiny: %s on %s, pinned %q %q: %s\nconsole:\n%s", r.State, r.Host, r.Image, r.ImageDigest, r.Error, cl.console(t, r.ID))
	}
	if got := strings.Count(runner.proc.Log(), "fetching image"); got != 1 {
		t.Fatalf("the runner fetched %d times, want 1", got)
	}

	// A failing build (debootstrap knows no such suite) publishes nothing.
	out, errOut, code = cl.srv.Run("image", "build", "tiny", "-m", "debootstrap", "-v", "no-such-suite", "--labels", "role=build")
	if code != 0 {
		t.Fatalf("image build: exit %d: %s", code, errOut)
	}
	r = cl.wait(t, strings.TrimSpace(out), 5*time.Minute, finished)
	if r.State != api.StateFailed {
		t.Fatalf("failing build: %s, want failed\nconsole:\n%s", r.State, cl.console(t, r.ID))
	}
	if vs, err := cl.client().ListImageVersions(ctx, "tiny"); err != nil || len(vs) != 1 {
		t.Fatalf("after a failed build: %d versions (%v), want 1", len(vs), err)
	}

	// A client token may not build.
	tok, err := cl.client().CreateClientToken(ctx, api.ClientTokenRequest{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.srv.ClientWith(tok.Token).BuildImage(ctx, api.BuildImageRequest{Build: api.ImageBuild{Name: "mine", Method: "busybox"}}); !errors.Is(err, api.ErrForbidden) {
		t.Fatalf("client token build: %v, want forbidden", err)
	}

	// Bad input is refused, by the CLI and by the server, with the reason.
	for _, tc := range []struct {
		build api.ImageBuild
		want  string
	}{
		{api.ImageBuild{Name: "x", Method: "tar=/etc/shadow"}, `method "tar=/etc/shadow": want one of busybox, debootstrap, freebsd`},
		{api.ImageBuild{Name: "x", Method: "lxc"}, `method "lxc"`},
		{api.ImageBuild{Name: "x", Method: "busybox", Arch: "../arm64"}, `arch "../arm64"`},
		{api.ImageBuild{Name: "x", Method: "debootstrap", Packages: []string{"--include=evil"}}, `package "--include=evil"`},
		{api.ImageBuild{Name: strings.Repeat("n", 60), Method: "busybox"}, "at most 57"},
	} {
		_, err := cl.client().BuildImage(ctx, api.BuildImageRequest{Build: tc.build})
		if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("server, build %+v: %v, want a bad request with %q", tc.build, err, tc.want)
		}
		args := []string{"image", "build", tc.build.Name, "-m", tc.build.Method}
		if tc.build.Arch != "" {
			args = append(args, "-a", tc.build.Arch)
		}
		for _, p := range tc.build.Packages {
			args = append(args, "--packages="+p)
		}
		if _, errOut, code := cl.srv.Run(args...); code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("kiln %v: exit %d, %q, want an error with %q", args, code, errOut, tc.want)
		}
	}
	j := api.Job{Name: "image.sneaky", Script: "true", ImageBuild: &api.ImageBuild{Name: "sneaky", Method: "busybox"}}
	if _, err := cl.client().AddJob(ctx, &j); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "set by 'kiln image build' only") {
		t.Fatalf("job with image_build: %v, want refused", err)
	}
	cl.assertNoLeftovers(t, builder, runner)
}

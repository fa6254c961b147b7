package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// Image builds (docs/images-server.md, "Building on a host"): `kiln image
// build NAME` stores the admin job api.ImageBuildJob(NAME), whose
// api.Job.ImageBuild says what to build, and executes it. Its runs are
// ordinary runs; the one difference is at the result (publishBuilt): a
// build that succeeded becomes the next version of NAME, or the run fails
// with the reason.

// buildJob is the job that builds req's image.
func buildJob(req *api.BuildImageRequest) api.Job {
	b := req.Build
	script := "# kiln image build " + b.Name + " -m " + b.Method
	if b.Version != "" {
		script += " -v " + b.Version
	}
	if b.Arch != "" {
		script += " -a " + b.Arch
	}
	if len(b.Packages) > 0 {
		script += " --packages " + strings.Join(b.Packages, ",")
	}
	return api.Job{
		Name: api.ImageBuildJob(b.Name), Arch: b.Arch, Script: script + "\n", Schedule: req.Schedule,
		Constraints: api.Constraints{OS: api.ImageBuildMethods[b.Method], Labels: req.Labels},
		ImageBuild:  &b,
	}
}

// storeBuildJob adds or modifies image req.Build.Name's build job; a job
// of that name that is not an image build is left alone (409).
func (s *Server) storeBuildJob(ctx context.Context, p *principal, req *api.BuildImageRequest) (*api.JobInfo, error) {
	if err := req.Build.Check(); err != nil {
		return nil, badRequest("%v", err)
	}
	for k, v := range req.Labels {
		if !names.Valid(k) || len(v) > 256 || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' }) {
			return nil, badRequest("image build %s: label %.80q=%.80q: want a name and printable text", req.Build.Name, k, v)
		}
	}
	if on := req.Build.On; on != "" {
		hosts, err := s.listHosts(ctx, on)
		if err != nil && !isAPINotFound(err) {
			return nil, err
		}
		if len(hosts) == 0 {
			return nil, badRequest("image build %s: no host %q is enrolled (kiln host list)", req.Build.Name, on)
		}
	}
	j := buildJob(req)
	ji, err := s.getJob(ctx, p, j.Name)
	switch {
	case isAPINotFound(err):
		return s.addJob(ctx, p, &j)
	case err != nil:
		return nil, err
	case ji.Job.ImageBuild == nil:
		return nil, errorf(http.StatusConflict, api.CodeExists, "job %q exists and is not the build of image %s: remove or rename it", j.Name, req.Build.Name)
	}
	if j.Schedule == "" {
		j.Schedule = ji.Schedule // modifyJob keeps it too; said here for the reader
	}
	return s.modifyJob(ctx, p, j.Name, &j)
}

func (s *Server) hBuildImage(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.BuildImageRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := buildName(r, &req); err != nil {
		return err
	}
	if req.Schedule != "" {
		return badRequest("image build %s: a schedule is set with PUT /v1/images/%s/schedule (kiln image schedule)", req.Build.Name, req.Build.Name)
	}
	if _, err := s.storeBuildJob(r.Context(), p, &req); err != nil {
		return err
	}
	run, err := s.executeJob(r.Context(), p, api.ImageBuildJob(req.Build.Name), 0, nil)
	if err != nil {
		return err
	}
	s.log.Info("image build queued", "image", req.Build.Name, "run", run.ID, "method", req.Build.Method, "arch", req.Build.Arch)
	return writeJSON(w, http.StatusCreated, run)
}

func (s *Server) hScheduleImage(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.BuildImageRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if err := buildName(r, &req); err != nil {
		return err
	}
	var ji *api.JobInfo
	var err error
	if req.Schedule == "" {
		ji, err = s.setSchedule(r.Context(), p, api.ImageBuildJob(req.Build.Name), "")
	} else {
		ji, err = s.storeBuildJob(r.Context(), p, &req)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ji)
}

// buildName takes the image name from the route: the body may repeat it.
func buildName(r *http.Request, req *api.BuildImageRequest) error {
	name := r.PathValue("name")
	if req.Build.Name == "" {
		req.Build.Name = name
	}
	if req.Build.Name != name {
		return badRequest("the request names image %q, the path %q", req.Build.Name, name)
	}
	return nil
}

// refuseImageBuild keeps job files (kiln job add/modify) from making an
// image build: only the admin's `kiln image build` does, as a build's
// result is published for every host.
func refuseImageBuild(j *api.Job) error {
	if j.ImageBuild != nil {
		return badRequest("job %s: image_build is set by 'kiln image build' only", j.Name)
	}
	return nil
}

// publishBuilt publishes the image an image build run made, when req is
// the successful result of run id held by host with req.Fence; a result
// of any other run is left alone. An error is why the build's result can
// not be published: the run is then recorded as failed with it.
func (s *Server) publishBuilt(ctx context.Context, host string, id int64, req *api.ResultRequest) error {
	if req.Error != "" || req.ExitCode != 0 || req.Signal != "" || req.TimedOut {
		return nil
	}
	if s.checkFence(ctx, host, id, req.Fence) != nil {
		return nil // recordResult answers a stale result
	}
	run, err := s.st.run(ctx, id)
	if err != nil {
		return nil
	}
	if !strings.HasPrefix(run.Job, api.ImageBuildPrefix) {
		return nil
	}
	spec, err := s.st.revisionSpec(ctx, run.Job, run.Revision)
	if err != nil {
		return fmt.Errorf("read the build's job: %w", err)
	}
	var j api.Job
	if err := json.Unmarshal([]byte(spec), &j); err != nil || j.ImageBuild == nil {
		return nil // a job of that name that builds nothing
	}
	b := j.ImageBuild
	var blob, manifest *api.Artifact
	for i, a := range req.Artifacts {
		switch a.Path {
		case api.ImageBuildBlob:
			blob = &req.Artifacts[i]
		case api.ImageBuildManifest:
			manifest = &req.Artifacts[i]
		}
	}
	if blob == nil || manifest == nil {
		return fmt.Errorf("the host sent no %s and %s artifacts", api.ImageBuildBlob, api.ImageBuildManifest)
	}
	if manifest.Size > api.MaxImageBuildManifest {
		return fmt.Errorf("%s of %d bytes exceeds %d", api.ImageBuildManifest, manifest.Size, api.MaxImageBuildManifest)
	}
	f, err := s.blobs.Open(manifest.SHA256)
	if err != nil {
		return fmt.Errorf("%s: %w", api.ImageBuildManifest, err)
	}
	defer f.Close()
	var built api.ImageBuilt
	dec := json.NewDecoder(io.LimitReader(f, api.MaxImageBuildManifest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&built); err != nil {
		return fmt.Errorf("%s: %w", api.ImageBuildManifest, err)
	}
	if b.Arch != "" && built.Arch != b.Arch {
		return fmt.Errorf("the build asked for arch %s, the host built %s", b.Arch, built.Arch)
	}
	if want := api.ImageBuildMethods[b.Method]; built.OS != want {
		return fmt.Errorf("method %s makes %s images, the host says %s", b.Method, want, built.OS)
	}
	v, _, err := s.publishImage(ctx, api.ImageVersion{
		Name: b.Name, Arch: built.Arch, OS: built.OS, Method: b.Method, Recipe: b.Recipe(),
		TarDigest: built.TarDigest, TarSize: built.TarSize, Blob: blob.SHA256, BlobSize: blob.Size,
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", b.Name, err)
	}
	s.log.Info("image build published", "run", id, "image", v.Ref(), "digest", v.TarDigest)
	return nil
}

// isAPINotFound reports whether err is the server's 404.
func isAPINotFound(err error) bool {
	var e *apiError
	return errors.As(err, &e) && e.status == http.StatusNotFound
}

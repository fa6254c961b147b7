package api

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/kiln-build/kiln/names"
)

// Image builds (issue 27, docs/images-server.md): `kiln image build NAME`
// stores an admin job named ImageBuildJob(NAME) whose ImageBuild says what
// to build. Its runs are ordinary runs (console, fencing, fairness, run
// info, schedule); a host leased one builds the tree with its images
// manager instead of running a script, packs it and uploads two artifacts,
// ImageBuildBlob and ImageBuildManifest; the server publishes the next
// version of NAME when the run succeeds.

const (
	// ImageBuildPrefix starts the name of every image build job.
	ImageBuildPrefix = "image."
	// ImageBuildBlob is the artifact holding the zstd-compressed tar.
	ImageBuildBlob = "image.tar.zst"
	// ImageBuildManifest is the artifact holding the host's ImageBuilt
	// (JSON).
	ImageBuildManifest = "image.json"
	// MaxImageBuildManifest bounds the manifest artifact the server reads.
	MaxImageBuildManifest = 64 << 10
)

// ImageBuildMethods are the methods a server-queued build may use, with
// the OS each needs. tar= and dir= name files of one host, so they are
// for `kiln image create` on that host (then `kiln image publish`).
var ImageBuildMethods = map[string]string{"busybox": "linux", "debootstrap": "linux", "freebsd": "freebsd"}

// ImageBuildJob is the name of the job that builds image name.
func ImageBuildJob(name string) string { return ImageBuildPrefix + name }

// ImageBuild is what an image build job builds: the arguments of `kiln
// image create` on the host that runs it.
type ImageBuild struct {
	Name     string   `json:"name"`
	Method   string   `json:"method"`
	Version  string   `json:"version,omitempty"`
	Arch     string   `json:"arch,omitempty"`
	Packages []string `json:"packages,omitempty"`
	// On names the one host that may build ("": any that fits).
	On string `json:"on,omitempty"`
}

// packageRe is a Debian package or FreeBSD dist set name.
var packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{0,127}$`)

// Check reports what makes b unbuildable; a worker checks it as part of
// the job (Job.Validate) before anything of it is used.
func (b *ImageBuild) Check() error {
	switch {
	case !names.Valid(b.Name) || len(ImageBuildJob(b.Name)) > 63:
		return fmt.Errorf("image build: name %.80q: want letters, digits, '.', '_', '-', at most %d", b.Name, 63-len(ImageBuildPrefix))
	case ImageBuildMethods[b.Method] == "":
		return fmt.Errorf("image build %s: method %.80q: want one of %s", b.Name, b.Method, strings.Join(ImageBuildMethodNames(), ", "))
	case b.Version != "" && !names.Valid(b.Version):
		return fmt.Errorf("image build %s: version %.80q: want a suite or release name", b.Name, b.Version)
	case b.Arch != "" && !names.Valid(b.Arch):
		return fmt.Errorf("image build %s: arch %.80q: want a kiln arch name (amd64, arm64, ...)", b.Name, b.Arch)
	case b.On != "" && !names.Valid(b.On):
		return fmt.Errorf("image build %s: host %.80q is not a host name", b.Name, b.On)
	case len(b.Packages) > 256:
		return fmt.Errorf("image build %s: %d packages: at most 256", b.Name, len(b.Packages))
	}
	for _, p := range b.Packages {
		if !packageRe.MatchString(p) {
			return fmt.Errorf("image build %s: package %.80q: want a package name", b.Name, p)
		}
	}
	return nil
}

// Recipe is the text a published version records as its recipe.
func (b *ImageBuild) Recipe() string {
	r := b.Method
	if b.Version != "" {
		r += " " + b.Version
	}
	if len(b.Packages) > 0 {
		r += " packages=" + strings.Join(b.Packages, ",")
	}
	return r
}

// ImageBuildMethodNames lists ImageBuildMethods, sorted.
func ImageBuildMethodNames() []string {
	var out []string
	for m := range ImageBuildMethods {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// ImageBuilt is what a host says of the tree it built (the artifact
// ImageBuildManifest): the server checks it against the blob artifact and
// the build's arch before publishing.
type ImageBuilt struct {
	Arch      string `json:"arch"`
	OS        string `json:"os"`
	TarDigest string `json:"tar_digest"`
	TarSize   int64  `json:"tar_size"`
}

// BuildImageRequest queues a build of an image (POST
// /v1/images/{name}/builds); the answer is the queued run.
type BuildImageRequest struct {
	Build ImageBuild `json:"build"`
	// Labels the building host must have (as a job's constraints.labels).
	Labels map[string]string `json:"labels,omitempty"`
	// Schedule, when set, is stored as the build job's schedule (the
	// jobs' cron syntax) and nothing is queued now.
	Schedule string `json:"schedule,omitempty"`
}

// BuildImage queues a build of req.Build.Name on a host that fits.
func (c *Client) BuildImage(ctx context.Context, req BuildImageRequest) (*Run, error) {
	var out Run
	_, err := c.do(ctx, "POST", "/v1/images/"+esc(req.Build.Name)+"/builds", nil, req, &out)
	return &out, err
}

// ScheduleImageBuild stores req as image req.Build.Name's build job with
// the schedule req.Schedule ("" clears the schedule of the stored job and
// ignores the rest of req), without queueing a run.
func (c *Client) ScheduleImageBuild(ctx context.Context, req BuildImageRequest) (*JobInfo, error) {
	var out JobInfo
	_, err := c.do(ctx, "PUT", "/v1/images/"+esc(req.Build.Name)+"/schedule", nil, req, &out)
	return &out, err
}

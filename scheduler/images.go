package scheduler

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/scheduler/blobs"
	"github.com/kiln-build/kiln/scheduler/web"
)

// Server-held images (docs/images-server.md): an admin publishes a version
// of an image whose compressed tar is in the blob store; a run whose job
// names the image is pinned to a version at execute, and its host fetches
// the blob if it lacks the version.

// maxRecipe bounds a manifest's recipe text.
const maxRecipe = 4096

// imageOSes are the systems an image version may be for.
var imageOSes = []string{"linux", "freebsd"}

// checkImageVersion refuses a manifest to publish that is malformed or
// whose blob is not stored, complete, with the size it gives.
func (s *Server) checkImageVersion(v *api.ImageVersion) error {
	switch {
	case !names.Valid(v.Name):
		return badRequest("image name %q: want letters, digits, '.', '_', '-' (at most 63, no \"..\")", v.Name)
	case v.Version < 0:
		return badRequest("image %s: version %d: want 0 (the next) or a positive number", v.Name, v.Version)
	case !names.Valid(v.Arch):
		return badRequest("image %s: arch %q: want a kiln arch name (amd64, arm64, ...)", v.Name, v.Arch)
	case !slices.Contains(imageOSes, v.OS):
		return badRequest("image %s: os %q: want one of %s", v.Name, v.OS, strings.Join(imageOSes, ", "))
	case v.Method != "" && !names.Valid(v.Method):
		return badRequest("image %s: method %q is not a method name", v.Name, v.Method)
	case len(v.Recipe) > maxRecipe:
		return badRequest("image %s: recipe of %d bytes exceeds %d", v.Name, len(v.Recipe), maxRecipe)
	case !strings.HasPrefix(v.TarDigest, "sha256:") || !api.ValidSHA256(strings.TrimPrefix(v.TarDigest, "sha256:")):
		return badRequest("image %s: tar_digest %q: want sha256:<64 lowercase hex digits>", v.Name, v.TarDigest)
	case v.TarSize <= 0:
		return badRequest("image %s: tar_size %d: want the uncompressed tar's length in bytes", v.Name, v.TarSize)
	case !blobs.ValidSHA(v.Blob):
		return badRequest("image %s: blob %q: %v", v.Name, v.Blob, blobs.ErrBadSHA)
	case v.BlobSize <= 0:
		return badRequest("image %s: blob_size %d: want the compressed blob's length in bytes", v.Name, v.BlobSize)
	case len(v.Hosts) > 0:
		return badRequest("image %s: hosts is filled in by listings, not sent", v.Name)
	}
	ok, size, err := s.blobs.Size(v.Blob)
	switch {
	case err != nil:
		return badRequest("image %s: blob %s: %v", v.Name, v.Blob, err)
	case !ok:
		return badRequest("image %s: blob %s is not uploaded (or its upload is not complete)", v.Name, v.Blob)
	case size != v.BlobSize:
		return badRequest("image %s: blob_size %d, but blob %s has %d bytes", v.Name, v.BlobSize, v.Blob, size)
	}
	return nil
}

// publishImage records a new image version; the same tree published
// again is answered with the stored version (created false).
func (s *Server) publishImage(ctx context.Context, v api.ImageVersion) (out api.ImageVersion, created bool, err error) {
	if err := s.checkImageVersion(&v); err != nil {
		return out, false, err
	}
	out, existing, err := s.st.publishImage(ctx, v, s.now())
	if err != nil {
		return out, false, err
	}
	if !existing {
		s.log.Info("image published", "image", out.Ref(), "digest", out.TarDigest, "blob_size", out.BlobSize, "arch", out.Arch, "os", out.OS)
		// The jobs on = ["image:NAME"] (graph.go).
		s.imagePublished(ctx, out.Name, int64(out.Version))
	}
	return out, !existing, nil
}

// listImages lists the server's image versions (of image name, "": all),
// each with the hosts that report holding it (api.Facts.FleetImages).
func (s *Server) listImages(ctx context.Context, name string) ([]api.ImageVersion, error) {
	vs, err := s.st.imageVersions(ctx, name)
	if err != nil || len(vs) == 0 {
		return vs, err
	}
	hosts, err := s.listHosts(ctx, "")
	if err != nil {
		return nil, err
	}
	for i := range vs {
		for _, h := range hosts {
			if slices.Contains(h.Facts.FleetImages, vs[i].TarDigest) {
				vs[i].Hosts = append(vs[i].Hosts, h.Name)
			}
		}
	}
	return vs, nil
}

// removeImage removes a version, refused while runs that have not ended
// are pinned to it. Its blob stays: a run that ended may name it, and
// the blob store keeps blobs by content.
func (s *Server) removeImage(ctx context.Context, name string, version int) error {
	if err := s.st.removeImageVersion(ctx, name, version); err != nil {
		return err
	}
	s.pins.Delete(name + "@" + strconv.Itoa(version))
	s.log.Info("image removed", "image", name+"@"+strconv.Itoa(version))
	return nil
}

// pinned is the manifest of the image version ref (NAME@VERSION) a run is
// pinned to; nil for "" (none). Version numbers are never reused and a
// pinned version is not removed while a run that has not ended pins it,
// so the manifest is cached.
func (s *Server) pinned(ctx context.Context, ref string) (*api.ImageVersion, error) {
	if ref == "" {
		return nil, nil
	}
	if v, ok := s.pins.Load(ref); ok {
		return v.(*api.ImageVersion), nil
	}
	name, ver, _ := strings.Cut(ref, "@")
	n, err := strconv.Atoi(ver)
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("run pinned to %q: not NAME@VERSION", ref)
	}
	v, err := s.st.imageVersion(ctx, name, n)
	if err != nil {
		return nil, fmt.Errorf("run pinned to %s: %w", ref, err)
	}
	s.pins.Store(ref, &v)
	return &v, nil
}

// parseImagePath reads {name} and {version} of an image route.
func parseImagePath(r *http.Request) (string, int, error) {
	name := r.PathValue("name")
	if !names.Valid(name) {
		return "", 0, badRequest("image name %q: want letters, digits, '.', '_', '-'", name)
	}
	v, err := strconv.Atoi(r.PathValue("version"))
	if err != nil || v < 0 {
		return "", 0, badRequest("image %s: version %q: want a number (0: the newest)", name, r.PathValue("version"))
	}
	return name, v, nil
}

func (s *Server) hPublishImage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.PublishImageRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if name := r.PathValue("name"); req.Version.Name == "" {
		req.Version.Name = name
	} else if req.Version.Name != name {
		return badRequest("the manifest names image %q, the path %q", req.Version.Name, name)
	}
	v, created, err := s.publishImage(r.Context(), req.Version)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return writeJSON(w, status, v)
}

func (s *Server) hListImages(w http.ResponseWriter, r *http.Request, _ *principal) error {
	name := r.URL.Query().Get("name")
	if name != "" && !names.Valid(name) {
		return badRequest("image name %q: want letters, digits, '.', '_', '-'", name)
	}
	vs, err := s.listImages(r.Context(), name)
	if err != nil {
		return err
	}
	if vs == nil {
		vs = []api.ImageVersion{}
	}
	return writeJSON(w, http.StatusOK, vs)
}

func (s *Server) hGetImage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	name, version, err := parseImagePath(r)
	if err != nil {
		return err
	}
	v, err := s.st.imageVersion(r.Context(), name, version)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, v)
}

func (s *Server) hRemoveImage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	name, version, err := parseImagePath(r)
	if err != nil {
		return err
	}
	if version == 0 {
		return badRequest("image %s: name the version to remove (NAME@VERSION)", name)
	}
	if err := s.removeImage(r.Context(), name, version); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// hSetRunPhase records what the host holding a run's lease says it does
// before the script starts (api.Client.SetRunPhase).
func (s *Server) hSetRunPhase(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	var req api.RunPhaseRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	fence := r.URL.Query().Get("fence")
	if err := s.checkFence(r.Context(), p.host, id, fence); err != nil {
		return err
	}
	text := ""
	switch req.Phase {
	case api.PhaseNone:
	case api.PhaseFetchingImage:
		run, err := s.st.run(r.Context(), id)
		if err != nil {
			return err
		}
		pin, err := s.pinned(r.Context(), run.Image)
		if err != nil {
			return err
		}
		if pin == nil {
			return badRequest("run %d is not pinned to a server-held image: there is nothing to fetch", id)
		}
		if req.Done < 0 || req.Done > pin.BlobSize || req.Rate < 0 {
			return badRequest("phase progress: done %d of %d bytes at %d bytes/s is not a progress", req.Done, pin.BlobSize, req.Rate)
		}
		text = "fetching image " + pin.Ref() + " (" + mebibytes(pin.BlobSize) + ")" + fetchProgress(req.Done, pin.BlobSize, req.Rate)
	default:
		return badRequest("phase %q: want %q or \"\"", req.Phase, api.PhaseFetchingImage)
	}
	ok, err := s.st.setRunPhase(r.Context(), p.host, id, fence, text)
	if err != nil {
		return err
	}
	if !ok {
		return staleFence(id)
	}
	s.changed(id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// fetchProgress says how far a fetch of total bytes is: ": 120 MiB done,
// 40 MiB/s, 3s left", or nothing before the first bytes.
func fetchProgress(done, total, rate int64) string {
	if done <= 0 {
		return ""
	}
	s := ": " + mebibytes(done) + " done"
	if rate > 0 {
		left := time.Duration(float64(total-done) / float64(rate) * float64(time.Second)).Round(time.Second)
		s += ", " + mebibytes(rate) + "/s, " + left.String() + " left"
	}
	return s
}

// mebibytes writes n bytes as people read a download's size: "212 MiB",
// "1.4 GiB", "312 KiB".
func mebibytes(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatInt((n+1<<19)>>20, 10) + " MiB"
	case n >= 1<<10:
		return strconv.FormatInt((n+1<<9)>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}

// Images serves the web view's image pages (web.ImageBackend): every
// viewer that may read sees the versions, an admin also the hosts holding
// each.
func (b *webBackend) Images(ctx context.Context, v web.Viewer) ([]api.ImageVersion, error) {
	vs, err := b.s.listImages(ctx, "")
	if err != nil {
		return nil, err
	}
	if !v.Admin() {
		for i := range vs {
			vs[i].Hosts = nil
		}
	}
	return vs, nil
}

package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
)

// ImageBuilder builds the image of an image build run (api.ImageBuild,
// docs/images-server.md) with the host's images manager, as `kiln image
// create` does, and packs it.
type ImageBuilder interface {
	// Build builds b, writes the packed tree (images.Pack: a zstd
	// deterministic tar) to blob and progress to console, and says what
	// it built. It leaves no image of its own on the host.
	Build(ctx context.Context, runID string, b api.ImageBuild, blob io.Writer, console io.Writer) (api.ImageBuilt, error)
}

// imageBuild carries an image build run through, as diffoscope carries a
// diffoscope task: build and pack into a directory of the data dir, upload
// the blob and the manifest as the run's artifacts (api.ImageBuildBlob,
// api.ImageBuildManifest) and report; the server publishes the version.
// The lease is not recorded on disk; a worker restarted mid-build lets it
// expire and be requeued.
func (w *Worker) imageBuild(ctx context.Context, a *api.Assignment) {
	b := a.Job.ImageBuild
	log := w.log.With("run", a.RunID, "task", "image-build", "image", b.Name, "attempt", a.Attempt)
	log.Info("leased")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A build is bounded like any run: the job's timeout, else the
	// host's default ([limits] timeout), else kiln's; a hung debootstrap
	// must not hold its slot forever.
	timeout := a.Job.TimeoutOrDefault()
	if a.Job.Timeout == 0 && w.cfg.Defaults.Timeout > 0 {
		timeout = w.cfg.Defaults.Timeout.Std()
	}
	runCtx, cancelTimeout := context.WithTimeout(runCtx, timeout)
	defer cancelTimeout()
	ar, untrack := w.track(a, cancel)
	defer untrack()

	dir := filepath.Join(w.cfg.DataDir, "imagebuild", w.cfg.ServerID+"-"+a.RunID)
	defer os.RemoveAll(dir)
	console, err := newConsoleFile(dir)
	ship := newShipper(w.live, w.srv, a.RunID, a.Fence, a.LogOffset, filepath.Join(dir, "console"), log)
	blobPath, manifestPath := filepath.Join(dir, api.ImageBuildBlob), filepath.Join(dir, api.ImageBuildManifest)
	var built api.ImageBuilt
	if err == nil {
		console.tee = ship
		built, err = w.buildImage(runCtx, a, blobPath, manifestPath, console)
		if err != nil {
			fmt.Fprintf(console, "[kiln] image build failed: %v\n", err)
		}
		console.Close()
	}
	if err != nil {
		log.Error("image build failed", "err", err)
	}
	shipCtx, stopShip := context.WithTimeout(w.live, 2*time.Minute)
	ship.finish(shipCtx, err)
	stopShip()

	if w.dropped(ar, ship, log) {
		return
	}
	ar.mu.Lock()
	cancelled := ar.cancelled
	ar.mu.Unlock()
	req := api.ResultRequest{Fence: a.Fence}
	upCtx, stopUp := context.WithTimeout(w.live, time.Hour)
	defer stopUp()
	if err == nil {
		for _, f := range []struct{ path, name string }{{blobPath, api.ImageBuildBlob}, {manifestPath, api.ImageBuildManifest}} {
			var art api.Artifact
			art, err = w.uploadFile(upCtx, a, f.path, f.name)
			if errors.Is(err, api.ErrStaleFence) || w.live.Err() != nil {
				if !w.dropped(ar, ship, log) {
					log.Warn("lease moved during upload; result dropped")
				}
				return
			}
			if err != nil {
				err = fmt.Errorf("%s upload: %w", f.name, err)
				break
			}
			req.Artifacts = append(req.Artifacts, art)
		}
	}
	if err != nil {
		switch {
		case cancelled:
			err = fmt.Errorf("cancel requested: %w", err)
			req.Signal = "SIGTERM"
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			req.TimedOut = true
		}
		req.Error, req.ExitCode, req.Artifacts = err.Error(), -1, nil
	}
	w.report(upCtx, a, req, ship, log)
	if err == nil {
		w.keepBuilt(upCtx, b.Name, built, blobPath, log)
	}
}

// ImageGetter is a Server that reads a server-held image version (an
// *api.Client is): with it a host keeps the image it built as the fleet
// snapshot of the version the server published, so that its runs on that
// version fetch nothing.
type ImageGetter interface {
	GetImageVersion(ctx context.Context, name string, version int) (*api.ImageVersion, error)
}

// keepBuilt imports the blob the host built and uploaded as the fleet
// snapshot of image name's newest version, if that is the tree built (the
// server published it; a newer build or a failed publish leaves nothing to
// keep). It reads the local blob: nothing is downloaded.
func (w *Worker) keepBuilt(ctx context.Context, name string, built api.ImageBuilt, blobPath string, log *slog.Logger) {
	getter, ok := w.cfg.Server.(ImageGetter)
	if w.cfg.Fleet == nil || !ok {
		return
	}
	v, err := getter.GetImageVersion(ctx, name, 0)
	if err != nil || v.TarDigest != built.TarDigest {
		log.Debug("built image not kept", "image", name, "err", err)
		return
	}
	if err := v.Check(); err != nil {
		log.Warn("built image not kept", "image", v.Ref(), "err", err)
		return
	}
	f, err := os.Open(blobPath)
	if err != nil {
		log.Warn("built image not kept", "image", v.Ref(), "err", err)
		return
	}
	defer f.Close()
	ref, err := w.cfg.Fleet.Import(ctx, *v, f)
	if err != nil {
		log.Warn("built image not kept", "image", v.Ref(), "err", err)
		return
	}
	log.Info("built image kept", "image", v.Ref(), "snapshot", ref)
}

// buildImage builds, packs and describes the assignment's image.
func (w *Worker) buildImage(ctx context.Context, a *api.Assignment, blobPath, manifestPath string, console io.Writer) (api.ImageBuilt, error) {
	if w.cfg.Builder == nil {
		return api.ImageBuilt{}, fmt.Errorf("this worker builds no images: %w", errdefs.ErrUnsupported)
	}
	b := *a.Job.ImageBuild
	fmt.Fprintf(console, "[kiln] building image %s: %s\n", b.Name, b.Recipe())
	f, err := os.OpenFile(blobPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return api.ImageBuilt{}, err
	}
	built, err := w.cfg.Builder.Build(ctx, a.RunID, b, f, console)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return api.ImageBuilt{}, err
	}
	fi, err := os.Stat(blobPath)
	if err != nil {
		return api.ImageBuilt{}, err
	}
	fmt.Fprintf(console, "[kiln] built %s/%s, tar %s (%d bytes), packed %d bytes\n", built.OS, built.Arch, built.TarDigest, built.TarSize, fi.Size())
	m, err := json.Marshal(built)
	if err != nil {
		return api.ImageBuilt{}, err
	}
	return built, os.WriteFile(manifestPath, m, 0o600)
}

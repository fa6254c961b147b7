package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	if a.Job.Timeout > 0 {
		runCtx, cancel = context.WithTimeout(runCtx, a.Job.Timeout.Std())
		defer cancel()
	}
	ar, untrack := w.track(a, cancel)
	defer untrack()

	dir := filepath.Join(w.cfg.DataDir, "imagebuild", w.cfg.ServerID+"-"+a.RunID)
	defer os.RemoveAll(dir)
	console, err := newConsoleFile(dir)
	ship := newShipper(w.live, w.srv, a.RunID, a.Fence, a.LogOffset, filepath.Join(dir, "console"), log)
	blobPath, manifestPath := filepath.Join(dir, api.ImageBuildBlob), filepath.Join(dir, api.ImageBuildManifest)
	if err == nil {
		console.tee = ship
		err = w.buildImage(runCtx, a, dir, blobPath, manifestPath, console)
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
}

// buildImage builds, packs and describes the assignment's image.
func (w *Worker) buildImage(ctx context.Context, a *api.Assignment, dir, blobPath, manifestPath string, console io.Writer) error {
	if w.cfg.Builder == nil {
		return fmt.Errorf("this worker builds no images: %w", errdefs.ErrUnsupported)
	}
	b := *a.Job.ImageBuild
	fmt.Fprintf(console, "[kiln] building image %s: %s\n", b.Name, b.Recipe())
	f, err := os.OpenFile(blobPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	built, err := w.cfg.Builder.Build(ctx, a.RunID, b, f, console)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fi, err := os.Stat(blobPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(console, "[kiln] built %s/%s, tar %s (%d bytes), packed %d bytes\n", built.OS, built.Arch, built.TarDigest, built.TarSize, fi.Size())
	m, err := json.Marshal(built)
	if err != nil {
		return err
	}
	return os.WriteFile(manifestPath, m, 0o600)
}

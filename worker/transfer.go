package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/sandbox"
)

// fetchInputs downloads each input into the cache by sha256 (once per
// host), verifying the content before it is kept.
func (w *Worker) fetchInputs(ctx context.Context, inputs []api.Input) ([]sandbox.InputFile, error) {
	cache := filepath.Join(w.cfg.DataDir, "cache", "inputs")
	if err := os.MkdirAll(cache, 0o750); err != nil {
		return nil, err
	}
	var out []sandbox.InputFile
	for _, in := range inputs {
		p := filepath.Join(cache, in.SHA256)
		if !useInput(p) {
			if err := w.download(ctx, in.SHA256, p); err != nil {
				return nil, fmt.Errorf("input %s: %w", in.Path, err)
			}
		}
		out = append(out, sandbox.InputFile{Path: in.Path, Source: p, SHA256: in.SHA256})
	}
	if limit := w.cfg.InputCacheMax; limit > 0 && len(inputs) > 0 {
		// Bound the cache (inputcache.go); these inputs are young.
		if n, freed, err := pruneInputCache(cache, limit, inputCacheGrace, time.Now()); err != nil {
			w.log.Warn("pruning the input cache", "err", err)
		} else if n > 0 {
			w.log.Info("pruned the input cache", "files", n, "bytes", freed)
		}
	}
	return out, nil
}

// download fetches the blob sha into dst, verifying it; a transient
// failure (a broken connection, a mismatch) starts over in a fresh file.
func (w *Worker) download(ctx context.Context, sha, dst string) error {
	_, err := api.Retry(ctx, w.cfg.Retry, func(err error, wait time.Duration) {
		w.log.Warn("download", "sha256", sha, "err", err, "retry_in", wait.Round(time.Millisecond))
	}, func() (struct{}, error) { return struct{}{}, w.downloadOnce(ctx, sha, dst) })
	return err
}

func (w *Worker) downloadOnce(ctx context.Context, sha, dst string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".dl-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	err = w.srv.DownloadBlob(ctx, sha, io.MultiWriter(tmp, h))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("%w: server sent %s", sandbox.ErrChecksum, got)
	}
	return os.Rename(tmp.Name(), dst)
}

// upload sends every collected regular file, streaming from disk (memory
// stays flat whatever the size); the server's retries resume a partial
// upload from what the server already holds.
func (w *Worker) upload(ctx context.Context, a *api.Assignment, staging string, arts []sandbox.Artifact) ([]api.Artifact, error) {
	var out []api.Artifact
	for _, art := range arts {
		if !art.Mode.IsRegular() {
			continue
		}
		if err := w.uploadOne(ctx, a, filepath.Join(staging, filepath.FromSlash(art.Path)), art); err != nil {
			return out, fmt.Errorf("%s: %w", art.Path, err)
		}
		out = append(out, api.Artifact{Path: art.Path, Size: art.Size, Mode: uint32(art.Mode.Perm()), SHA256: art.SHA256})
	}
	return out, nil
}

func (w *Worker) uploadOne(ctx context.Context, a *api.Assignment, path string, art sandbox.Artifact) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return w.srv.UploadArtifact(ctx, a.RunID, a.Fence, art.SHA256, f, art.Size)
}

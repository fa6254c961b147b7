package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sync/singleflight"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
)

// FleetImages keeps, on this host, the server-held image versions its
// runs are pinned to (docs/images.md): each as a snapshot of the host's
// storage. Safe for concurrent use.
type FleetImages interface {
	// Find returns the snapshot ref ("image@version", what the host's
	// Images resolve) of v if the host has it.
	Find(ctx context.Context, v api.ImageVersion) (ref string, ok bool, err error)
	// Import makes the zstd stream r (v's blob) v's snapshot, refusing a
	// stream that does not match v's TarSize and TarDigest
	// (errdefs.ErrInvalid) and leaving nothing then.
	Import(ctx context.Context, v api.ImageVersion, r io.Reader) (ref string, err error)
	// Prune removes versions of image name past the host's [images] keep,
	// never one a clone uses nor one protect (by TarDigest) names.
	Prune(ctx context.Context, name string, protect func(tarDigest string) bool) error
	// Digests lists the TarDigests of the versions the host holds.
	Digests(ctx context.Context) ([]string, error)
}

// BlobRanger is a Server that downloads a blob from an offset on (an
// *api.Client is): with it a cut-off image fetch resumes where it stopped,
// without it the fetch starts over.
type BlobRanger interface {
	DownloadBlobFrom(ctx context.Context, sha string, offset int64, w io.Writer) (int64, error)
}

// fleetFetcher brings server-held image versions to the host: one fetch
// per TarDigest however many runs need it (single-flight across slots),
// into <data dir>/images/fetch/<blob>.part, which a restarted worker
// resumes from.
type fleetFetcher struct {
	store   FleetImages
	srv     Server
	ranger  BlobRanger // nil: no ranged downloads
	dir     string
	backoff api.Backoff
	live    context.Context // fetches outlive the run that started them
	started func(runID string, v api.ImageVersion)
	log     *slog.Logger

	flight singleflight.Group
	mu     sync.Mutex
	inUse  map[string]int // TarDigest -> runs between ensure and their clone
}

func newFleetFetcher(w *Worker) *fleetFetcher {
	f := &fleetFetcher{store: w.cfg.Fleet, srv: w.srv, dir: filepath.Join(w.cfg.DataDir, "images", "fetch"),
		backoff: w.cfg.Retry, live: w.live, started: w.cfg.FetchStarted, log: w.log, inUse: map[string]int{}}
	f.ranger, _ = w.cfg.Server.(BlobRanger)
	return f
}

// ensure makes sure the host has v, fetching it when it lacks it (after
// calling onFetch, when set), and returns its snapshot ref. Until done is
// called (once the run's clone exists) the version is protected from
// pruning; done then prunes the image down to [images] keep.
func (f *fleetFetcher) ensure(ctx context.Context, runID string, v api.ImageVersion, onFetch func()) (ref string, done func(), err error) {
	f.mu.Lock()
	f.inUse[v.TarDigest]++
	f.mu.Unlock()
	done = sync.OnceFunc(func() {
		f.mu.Lock()
		if f.inUse[v.TarDigest]--; f.inUse[v.TarDigest] <= 0 {
			delete(f.inUse, v.TarDigest)
		}
		f.mu.Unlock()
		go f.prune(v.Name)
	})
	defer func() {
		if err != nil {
			done()
		}
	}()
	if ref, ok, err := f.store.Find(ctx, v); err != nil || ok {
		return ref, done, err
	}
	if f.started != nil {
		f.started(runID, v)
	}
	if onFetch != nil {
		onFetch()
	}
	f.log.Info("fetching image", "run", runID, "image", v.Ref(), "size", humanize.IBytes(uint64(max(v.BlobSize, 0))))
	ch := f.flight.DoChan(v.TarDigest, func() (any, error) {
		// The fetch is shared: it ends with the worker, not with the
		// run that happened to start it.
		return f.fetch(f.live, v)
	})
	select {
	case <-ctx.Done():
		return "", done, context.Cause(ctx)
	case r := <-ch:
		if r.Err != nil {
			return "", done, r.Err
		}
		return r.Val.(string), done, nil
	}
}

func (f *fleetFetcher) protected(tarDigest string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inUse[tarDigest] > 0
}

func (f *fleetFetcher) prune(name string) {
	ctx, cancel := context.WithTimeout(f.live, 10*time.Minute)
	defer cancel()
	if err := f.store.Prune(ctx, name, f.protected); err != nil && ctx.Err() == nil {
		f.log.Warn("prune fleet image versions", "image", name, "err", err)
	}
}

// fetch brings v to the host: from the start, downloading and importing
// at once (streamImport); with a partial file left by a broken transfer or
// a killed worker, resuming the download, checking the blob's sha256 and
// size, then importing the file.
func (f *fleetFetcher) fetch(ctx context.Context, v api.ImageVersion) (string, error) {
	// Another flight may have imported it since this run looked.
	if ref, ok, err := f.store.Find(ctx, v); err != nil || ok {
		return ref, err
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return "", err
	}
	part := filepath.Join(f.dir, v.Blob+".part")
	t0 := time.Now()
	if _, err := os.Stat(part); errors.Is(err, os.ErrNotExist) && f.ranger != nil {
		// A fetch from the start unpacks while it downloads; if the
		// transfer breaks, what reached the file is resumed below.
		ref, derr, err := f.streamImport(ctx, v, part)
		switch {
		case err == nil:
			_ = os.Remove(part)
			f.log.Info("image fetched", "image", v.Ref(), "snapshot", ref, "time", time.Since(t0).Round(time.Millisecond))
			return ref, nil
		case derr == nil && errors.Is(err, errdefs.ErrInvalid):
			// Every byte came and the tree is not what the manifest
			// says: fetching it again cannot help.
			_ = os.Remove(part)
			return "", fmt.Errorf("image %s from the server is refused: %w", v.Ref(), err)
		case ctx.Err() != nil:
			return "", context.Cause(ctx)
		}
		f.log.Warn("image download broke; resuming", "image", v.Ref(), "err", err, "download_err", derr)
	}
	if err := f.download(ctx, v, part); err != nil {
		return "", err
	}
	t1 := time.Now()
	file, err := os.Open(part)
	if err != nil {
		return "", err
	}
	defer file.Close()
	ref, err := f.store.Import(ctx, v, file)
	if errors.Is(err, errdefs.ErrInvalid) {
		// The blob had the server's digest, but its tree is not what the
		// manifest says: fetching it again cannot help.
		_ = os.Remove(part)
		return "", fmt.Errorf("image %s from the server is refused: %w", v.Ref(), err)
	}
	if err != nil {
		return "", err
	}
	_ = os.Remove(part)
	f.log.Info("image fetched", "image", v.Ref(), "snapshot", ref,
		"transfer", t1.Sub(t0).Round(time.Millisecond), "import", time.Since(t1).Round(time.Millisecond))
	return ref, nil
}

// streamImport downloads v's blob from its start into part and, through a
// pipe, into the import at the same time, so that the transfer and the
// unpack overlap. derr is the download's error, err the import's (or the
// download's when only it failed). The import checks the tar's size and
// digest, which is what identifies the tree; the blob's own sha256 is not
// needed then.
func (f *fleetFetcher) streamImport(ctx context.Context, v api.ImageVersion, part string) (ref string, derr, err error) {
	file, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", nil, err
	}
	defer file.Close()
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	downloaded := make(chan error, 1)
	go func() {
		// The file first: what the import has read is on disk for a resume.
		lw := &limitWriter{w: io.MultiWriter(file, pw), left: v.BlobSize}
		_, err := f.ranger.DownloadBlobFrom(dctx, v.Blob, 0, lw)
		if errors.Is(err, errBlobTooLong) {
			err = nil // the import's checks decide
		}
		if err == nil && lw.left > 0 {
			err = fmt.Errorf("the server sent %d of the blob's %d bytes", v.BlobSize-lw.left, v.BlobSize)
		}
		pw.CloseWithError(err) // nil: EOF for the import
		downloaded <- err
	}()
	ref, err = f.store.Import(ctx, v, pr)
	// A refused stream stops the download; a good one has read it all.
	_ = pr.CloseWithError(errors.New("the import ended"))
	if err != nil {
		cancel()
	}
	derr = <-downloaded
	if err == nil && derr != nil {
		// The tree checked out whole; what failed after it is the
		// download of trailing bytes nobody needs.
		derr = nil
	}
	if err == nil {
		return ref, nil, nil
	}
	if derr != nil {
		return "", derr, derr
	}
	return "", nil, err
}

// download brings the blob into part, resuming from what part holds,
// retrying a broken transfer, and checks the whole file's sha256 against
// v.Blob. A mismatch removes the file and starts over once; a second one
// is the server's blob, and fails the fetch.
func (f *fleetFetcher) download(ctx context.Context, v api.ImageVersion, part string) error {
	for try := 1; ; try++ {
		_, err := api.Retry(ctx, f.backoff, func(err error, wait time.Duration) {
			f.log.Warn("image download", "image", v.Ref(), "err", err, "retry_in", wait.Round(time.Millisecond))
		}, func() (struct{}, error) {
			return struct{}{}, f.downloadOnce(ctx, v, part)
		})
		if err != nil {
			return fmt.Errorf("download image %s (blob %s): %w", v.Ref(), v.Blob, err)
		}
		err = checkBlob(part, v)
		if err == nil || try == 2 {
			return err
		}
		f.log.Warn("image download discarded; starting over", "image", v.Ref(), "err", err)
	}
}

func (f *fleetFetcher) downloadOnce(ctx context.Context, v api.ImageVersion, part string) error {
	file, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return err
	}
	have := fi.Size()
	if have > v.BlobSize || f.ranger == nil {
		if err := file.Truncate(0); err != nil {
			return err
		}
		have = 0
	}
	if have < v.BlobSize {
		if have > 0 {
			f.log.Info("resuming image download", "image", v.Ref(), "from", have, "of", v.BlobSize)
		}
		// Never more than the manifest says: a server sending more is
		// cut off, and the digest check below refuses it.
		lw := &limitWriter{w: file, left: v.BlobSize - have}
		if f.ranger != nil {
			_, err = f.ranger.DownloadBlobFrom(ctx, v.Blob, have, lw)
		} else {
			err = f.srv.DownloadBlob(ctx, v.Blob, lw)
		}
		if errors.Is(err, errBlobTooLong) {
			err = nil // the file has the blob's size: its digest decides
		}
		// No fsync: a killed worker's bytes are in the page cache, and
		// after a power loss whatever the file holds is checked by the
		// digest (a mismatch fetches it anew); the snapshot made from it
		// is the store's to make durable.
		if err != nil {
			return err
		}
	}
	return file.Close()
}

// checkBlob hashes the downloaded file: one of the wrong digest or size
// is removed, so that the next try fetches it anew.
func checkBlob(part string, v api.ImageVersion) error {
	file, err := os.Open(part)
	if err != nil {
		return err
	}
	defer file.Close()
	h := sha256.New()
	n, err := io.Copy(h, file)
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != v.BlobSize || got != v.Blob {
		_ = os.Remove(part)
		return fmt.Errorf("blob of image %s: got %d bytes with sha256 %s, want %d bytes with %s: the download was discarded", v.Ref(), n, got, v.BlobSize, v.Blob)
	}
	return nil
}

// limitWriter takes at most left bytes and fails past them.
type limitWriter struct {
	w    io.Writer
	left int64
}

var errBlobTooLong = errors.New("the server sent more bytes than the image's blob size")

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		n, err := l.w.Write(p[:l.left])
		l.left -= int64(n)
		if err == nil {
			err = errBlobTooLong
		}
		return n, err
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// fleetImage is the image ref a's run uses on this host: its job's image,
// or for a run pinned to a server-held version (a.Image) the snapshot of
// that version, fetched first if the host lacks it. done is called once
// the run's clone exists.
func (w *Worker) fleetImage(ctx context.Context, a *api.Assignment) (ref string, done func(), err error) {
	if a.Image == nil {
		return a.Job.Image, func() {}, nil
	}
	if w.fleet == nil {
		return "", nil, fmt.Errorf("the run is pinned to the server-held image %s, but this host keeps none: %w", a.Image.Ref(), errdefs.ErrUnsupported)
	}
	fetching := false
	stop := make(chan struct{})
	reported := make(chan struct{})
	ref, done, err = w.fleet.ensure(ctx, a.RunID, *a.Image, func() {
		fetching = true
		w.setPhase(ctx, a, api.PhaseFetchingImage)
		go func() {
			defer close(reported)
			w.reportFetch(ctx, a, stop)
		}()
	})
	if fetching {
		close(stop)
		<-reported
		if err == nil {
			w.setPhase(ctx, a, api.PhaseNone)
		}
	}
	return ref, done, err
}

// fetchReportEvery is how often a run waiting for its image tells the
// server how far the fetch is.
const fetchReportEvery = 2 * time.Second

// reportFetch tells the server, every fetchReportEvery until stop, how
// many bytes of a's image blob have arrived and at what rate, for `kiln
// run info` and the run's page ("120 MiB done, 40 MiB/s, 3s left"). The
// count is the partial file's size, which every way of fetching (from
// the start, resumed) appends to.
func (w *Worker) reportFetch(ctx context.Context, a *api.Assignment, stop <-chan struct{}) {
	ps, ok := w.cfg.Server.(ProgressSetter)
	if !ok {
		return
	}
	t := time.NewTicker(fetchReportEvery)
	defer t.Stop()
	last, lastAt := w.fleet.received(*a.Image), time.Now()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case now := <-t.C:
			got := w.fleet.received(*a.Image)
			if got <= last {
				continue
			}
			rate := int64(float64(got-last) / now.Sub(lastAt).Seconds())
			last, lastAt = got, now
			req := api.RunPhaseRequest{Phase: api.PhaseFetchingImage, Done: min(got, a.Image.BlobSize), Rate: rate}
			if err := ps.SetRunProgress(ctx, a.RunID, a.Fence, req); err != nil {
				w.log.Debug("report the image fetch's progress", "run", a.RunID, "err", err)
			}
		}
	}
}

// ProgressSetter is a PhaseSetter that also carries a fetch's progress
// (an *api.Client is).
type ProgressSetter interface {
	SetRunProgress(ctx context.Context, runID, fence string, req api.RunPhaseRequest) error
}

// received is how many bytes of v's blob the host holds in its partial
// file (0 when there is none).
func (f *fleetFetcher) received(v api.ImageVersion) int64 {
	fi, err := os.Stat(filepath.Join(f.dir, v.Blob+".part"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// PhaseSetter is a Server that is told what a host does before a run's
// script starts (an *api.Client is); without it the server is not told.
type PhaseSetter interface {
	SetRunPhase(ctx context.Context, runID, fence, phase string) error
}

// setPhase tells the server the run's phase, once: the phase is for
// people to read, and the run goes on whatever the answer.
func (w *Worker) setPhase(ctx context.Context, a *api.Assignment, phase string) {
	ps, ok := w.cfg.Server.(PhaseSetter)
	if !ok {
		return
	}
	if err := ps.SetRunPhase(ctx, a.RunID, a.Fence, phase); err != nil {
		w.log.Warn("report the run's phase", "run", a.RunID, "phase", phase, "err", err)
	}
}

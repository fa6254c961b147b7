package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// diffoscope carries a diffoscope task through: fetch the differing files
// of both runs, run the host's diffoscope hook on them, upload its report
// and report the result. The hook is host code the admin chose, but the
// files were written by jobs and diffoscope unpacks and parses hundreds
// of formats, so on Linux the hook runs in a container of its own
// (runDiffoscope). The lease is not recorded on disk; a worker restarted
// mid-task lets it expire and be requeued: its sandbox is not reattached.
func (w *Worker) diffoscope(ctx context.Context, a *api.Assignment) {
	log := w.log.With("run", a.RunID, "task", api.KindDiffoscope, "group", a.Diffoscope.Group, "attempt", a.Attempt)
	log.Info("leased")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ar, untrack := w.track(a, cancel)
	defer untrack()

	// Keyed by server like runs; a killed worker's leftover is stale.
	dir := filepath.Join(w.cfg.DataDir, "diffoscope", w.cfg.ServerID+"-"+a.RunID)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	console, err := newConsoleFile(dir)
	ship := newShipper(w.live, w.srv, a.RunID, a.Fence, a.LogOffset, filepath.Join(dir, "console"), log)
	var report string
	var check *api.Check
	if err == nil {
		console.tee = ship
		report, check, err = w.compare(runCtx, a, dir, console)
		console.Close()
	}
	if err != nil {
		log.Error("diffoscope task failed", "err", err)
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
	if check != nil {
		req.Checks = []api.Check{*check}
	}
	upCtx, stopUp := context.WithTimeout(w.live, time.Hour)
	defer stopUp()
	if err == nil {
		var art api.Artifact
		art, err = w.uploadFile(upCtx, a, report, api.DiffoscopeReport)
		if errors.Is(err, api.ErrStaleFence) || w.live.Err() != nil {
			if !w.dropped(ar, ship, log) {
				log.Warn("lease moved during upload; result dropped")
			}
			return
		}
		if err != nil {
			err = fmt.Errorf("report upload: %w", err)
		}
		req.Artifacts = []api.Artifact{art}
	}
	if err != nil {
		if cancelled {
			err = fmt.Errorf("cancel requested: %w", err)
			req.Signal = "SIGTERM"
		}
		req.Error, req.ExitCode, req.Artifacts = err.Error(), -1, nil
	}
	w.report(upCtx, a, req, ship, log)
}

// compare fetches the task's files into dir/a and dir/b and runs the
// diffoscope hook; it returns the report's path. The hook's exit status
// 1 with a report written is diffoscope's "differences found": success.
func (w *Worker) compare(ctx context.Context, a *api.Assignment, dir string, console io.Writer) (string, *api.Check, error) {
	h, ok := w.cfg.Hooks[api.DiffoscopeHook]
	if !ok || h.Stage != sandbox.StagePost {
		return "", nil, fmt.Errorf("this host defines no post hook named %q: %w", api.DiffoscopeHook, errdefs.ErrNotFound)
	}
	h.Name = api.DiffoscopeHook
	t := a.Diffoscope
	d := diffoscopeDirs{task: dir, a: filepath.Join(dir, "a"), b: filepath.Join(dir, "b"), out: filepath.Join(dir, "out")}
	dirA, dirB := d.a, d.b
	type fetch struct{ path, sha, dst string }
	var fetches []fetch
	for _, f := range t.Files {
		for _, side := range []struct{ dir, sha string }{{dirA, f.SHA256A}, {dirB, f.SHA256B}} {
			if side.sha == "" {
				continue // only in the other run
			}
			// Assignment.Validate checked that every path is clean,
			// relative and without "..", and only this function writes
			// below dir (no links), so the join stays inside side.dir.
			fetches = append(fetches, fetch{f.Path, side.sha, filepath.Join(side.dir, filepath.FromSlash(f.Path))})
		}
	}
	fmt.Fprintf(console, "[kiln] diffoscope of group %s: run %s (a) against run %s (b), %d files\n", t.Group, t.RunA, t.RunB, len(t.Files))
	// Sizes first, so that a task over the cap fails before it fills the
	// disk rather than after.
	var total int64
	for _, f := range fetches {
		stored, size, err := w.srv.BlobReceived(ctx, f.sha)
		if err == nil && !stored {
			err = fmt.Errorf("not stored on the server: %w", errdefs.ErrNotFound)
		}
		if err != nil {
			return "", nil, fmt.Errorf("file %q (%s): %w", f.path, f.sha, err)
		}
		total += size
	}
	if limit := w.diffoscopeMax(); total > limit {
		return "", nil, fmt.Errorf("the %d differing files are %d bytes, over this host's diffoscope_max of %d bytes",
			len(fetches), total, limit)
	}
	for _, p := range []string{dirA, dirB, d.out} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return "", nil, err
		}
	}
	for _, f := range fetches {
		if err := os.MkdirAll(filepath.Dir(f.dst), 0o755); err != nil {
			return "", nil, fmt.Errorf("file %q: %w", f.path, err)
		}
		if err := w.download(ctx, f.sha, f.dst); err != nil {
			return "", nil, fmt.Errorf("file %q (%s): %w", f.path, f.sha, err)
		}
		// Readable to the sandbox's unprivileged user, which sees the
		// files as another user's.
		if err := os.Chmod(f.dst, 0o644); err != nil {
			return "", nil, fmt.Errorf("file %q: %w", f.path, err)
		}
	}
	fmt.Fprintf(console, "[kiln] fetched %d files, %d bytes; running the %s hook\n", len(fetches), total, api.DiffoscopeHook)
	report := filepath.Join(d.out, api.DiffoscopeReport)
	// runDiffoscope adds where the files and the report are, as the hook
	// sees them.
	env := map[string]string{
		"KILN_RUN":   a.RunID,
		"KILN_JOB":   a.Job.Name,
		"KILN_GROUP": t.Group,
		"KILN_RUN_A": t.RunA,
		"KILN_RUN_B": t.RunB,
	}
	c := w.runDiffoscope(ctx, a, h, env, d, console)
	check := &api.Check{Name: c.Name, Stage: string(c.Stage), ExitCode: c.ExitCode, Error: c.Err}
	// Lstat: the report is uploaded as this task's artifact, so a link
	// the hook left there does not count as a report.
	st, statErr := os.Lstat(report)
	wrote := statErr == nil && st.Mode().IsRegular()
	hook := fmt.Sprintf("%s hook (%s)", api.DiffoscopeHook, h.Command[0])
	switch {
	case ctx.Err() != nil:
		return "", check, fmt.Errorf("%s stopped: %w", hook, ctx.Err())
	case (c.ExitCode == 0 || c.ExitCode == 1) && wrote:
		check.Error = ""
		fmt.Fprintf(console, "[kiln] %s exited %d; report %d bytes\n", hook, c.ExitCode, st.Size())
		return report, check, nil
	case c.Failed() && c.ExitCode != 1:
		// Exit 2 is diffoscope's own error; -1 a timeout (the hook's
		// process group is killed) or a hook that could not start.
		fmt.Fprintf(console, "[kiln] %s failed: %s; no report\n", hook, c.Err)
		return "", check, fmt.Errorf("%s failed: %s", hook, c.Err)
	default:
		check.Error = fmt.Sprintf("exited %d without writing $KILN_REPORT", c.ExitCode)
		fmt.Fprintf(console, "[kiln] %s %s; no report\n", hook, check.Error)
		return "", check, fmt.Errorf("%s %s", hook, check.Error)
	}
}

// diffoscopeDirs are a diffoscope task's directories on the host: the
// task's own, the two runs' files (read-only to the hook) and the one the
// hook writes its report into.
type diffoscopeDirs struct{ task, a, b, out string }

// DefaultDiffoscopeMax is the download cap of a diffoscope task when
// Config.DiffoscopeMax is 0 (the host config's default).
const DefaultDiffoscopeMax = 2 << 30

func (w *Worker) diffoscopeMax() int64 {
	if w.cfg.DiffoscopeMax > 0 {
		return w.cfg.DiffoscopeMax
	}
	return DefaultDiffoscopeMax
}

// uploadFile uploads the file at path as the task's artifact name.
func (w *Worker) uploadFile(ctx context.Context, a *api.Assignment, path, name string) (api.Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return api.Artifact{}, err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return api.Artifact{}, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	err = w.srv.UploadArtifact(ctx, a.RunID, a.Fence, sum, f, size)
	return api.Artifact{Path: name, Size: size, Mode: 0o644, SHA256: sum}, err
}

// consoleFile is the task's console spool: the shipper reads the bytes
// back from the file, and writes through tee only nudge it.
type consoleFile struct {
	mu  sync.Mutex
	f   *os.File
	tee io.Writer
}

func newConsoleFile(dir string) (*consoleFile, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "console"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &consoleFile{f: f}, nil
}

func (c *consoleFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.f.Write(p)
	if c.tee != nil {
		_, _ = c.tee.Write(p[:n])
	}
	return n, err
}

func (c *consoleFile) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.f.Close()
}

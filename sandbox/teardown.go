package sandbox

// What a run leaves behind, and who takes it back: a run's own teardown
// (in the background once its result is out), Forget, Close and the
// reaper after a restart.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// teardownRun takes back what a run made: its sandbox, its cache layers,
// its clone and the warm task's clone it took; every step is tried
// whatever failed before it.
func (r *Runner) teardownRun(ctx context.Context, key string, sb Sandbox, warm *warmClone) error {
	var errs []error
	if sb != nil {
		if err := sb.Delete(ctx); err != nil {
			errs = append(errs, fmt.Errorf("delete sandbox: %w", err))
		}
	}
	if err := unmountCaches(filepath.Join(r.RunsDir, key)); err != nil {
		errs = append(errs, err)
	}
	if err := r.Storage.Destroy(ctx, key); err != nil {
		errs = append(errs, fmt.Errorf("destroy clone: %w", err))
	}
	if warm != nil {
		if err := r.dropWarm(ctx, warm); err != nil {
			errs = append(errs, fmt.Errorf("destroy clone: %w", err))
		}
	}
	return errors.Join(errs...)
}

// background runs f, a run's teardown, without holding up the run's
// result; waitTeardown and Close wait for it.
func (r *Runner) background(runID string, f func() error) {
	done := make(chan struct{})
	r.mu.Lock()
	if r.tearing == nil {
		r.tearing = map[string]chan struct{}{}
	}
	r.tearing[runID] = done
	r.mu.Unlock()
	r.teardown.Add(1)
	go func() {
		defer r.teardown.Done()
		defer close(done)
		_ = f()
		r.mu.Lock()
		delete(r.tearing, runID)
		r.mu.Unlock()
	}()
}

// waitTeardown blocks until an async teardown of runID (if any) is done.
func (r *Runner) waitTeardown(runID string) {
	r.mu.Lock()
	done := r.tearing[runID]
	r.mu.Unlock()
	if done != nil {
		<-done
	}
}

// Forget removes what is left of a finished run on the host (inputs, the
// host side of /out, the console spool), after its teardown. Idempotent.
func (r *Runner) Forget(runID string) error {
	if err := validRunID(runID); err != nil {
		return err
	}
	key := r.Key(runID)
	r.waitTeardown(key)
	dir := filepath.Join(r.RunsDir, key)
	r.dirs.Lock()
	defer r.dirs.Unlock()
	if runLockHeld(dir) {
		return nil // a new attempt of the run has started here since
	}
	if err := unmountCaches(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// Close waits for background teardowns and fills of the warm pool, and
// destroys the warm clones and tasks; none are made after it.
func (r *Runner) Close(ctx context.Context) error {
	r.teardown.Wait()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.fills.Wait()
	r.mu.Lock()
	warm := r.warm
	r.warm = nil
	r.mu.Unlock()
	var errs []error
	for _, ws := range warm {
		for _, w := range ws {
			errs = append(errs, r.dropWarm(ctx, w))
		}
	}
	return errors.Join(errs...)
}

// Reap destroys every sandbox, clone and run directory of this data dir
// (Identity) whose run no live process holds (its driver died, e.g. by
// kill -9), whichever server the run came from: this runner's process owns
// the data dir, so runs of another server it was once enrolled with are
// leftovers. keep, when not nil, protects more runs of this runner's
// server by run ID (a worker's leases it will reattach). Sandboxes and
// clones of other identities are never touched. Safe to call while other
// runs are going.
func (r *Runner) Reap(ctx context.Context, keep func(runID string) bool) error {
	mine := r.Key("")
	kept := func(key string) bool {
		if keep == nil {
			return false
		}
		id, ok := strings.CutPrefix(key, mine)
		return ok && keep(id)
	}
	entries, err := os.ReadDir(r.RunsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	spared := r.sparedBy(entries, kept)
	held := func(key string) bool {
		// Never another identity's, whatever the launcher lists.
		return !r.owns(key) || spared(key)
	}
	var errs []error
	if err := r.Launcher.Reap(ctx, held); err != nil {
		errs = append(errs, fmt.Errorf("reap sandboxes: %w", err))
	}
	clones, err := r.Storage.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list clones: %w", err))
	}
	for _, c := range clones {
		if held(c.RunID) {
			continue
		}
		r.log().Info("reaping orphaned clone", "clone", c.RunID, "snapshot", c.Snapshot)
		if err := r.Storage.Destroy(ctx, c.RunID); err != nil {
			errs = append(errs, fmt.Errorf("destroy orphaned clone %s: %w", c.RunID, err))
		}
	}
	// Everything in RunsDir is this data dir's.
	for _, e := range entries {
		if e.IsDir() && !spared(e.Name()) {
			if err := unmountCaches(filepath.Join(r.RunsDir, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := os.RemoveAll(filepath.Join(r.RunsDir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// sparedBy returns what Reap must leave alone among this data dir's keys:
// the runs kept or held by a live process, and the clone and sandbox each
// kept run's record (in RunsDir's entries) names, which may be a warm
// clone and task under keys of their own. A kept run's record that cannot
// be read whole might name any warm entry: then none is reaped this time.
func (r *Runner) sparedBy(entries []os.DirEntry, kept func(key string) bool) func(key string) bool {
	protected := map[string]bool{}
	unsure := false
	for _, e := range entries {
		if !kept(e.Name()) {
			continue
		}
		rec, err := readRecord(filepath.Join(r.RunsDir, e.Name()), e.Name())
		switch {
		case err == nil:
			protected[rec.Clone], protected[rec.Sandbox] = true, true
		case !errors.Is(err, errNoRecord):
			unsure = true
			r.log().Warn("kept run's record unreadable: no warm clone or task is reaped", "run", e.Name(), "err", err)
		}
	}
	warm := r.Key(warmPrefix)
	return func(key string) bool {
		return kept(key) || protected[key] || unsure && strings.HasPrefix(key, warm) ||
			runLockHeld(filepath.Join(r.RunsDir, key))
	}
}

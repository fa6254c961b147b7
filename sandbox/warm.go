package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// maxWarm bounds the clones kept ready, one per snapshot.
const maxWarm = 4

// warmClone is a clone made ahead of any run, so that a run of a recently
// used image starts without waiting for clone creation. It is locked like a
// run (under its own "warm-" id), so the reaper leaves it alone while this
// process lives and removes it after a crash.
type warmClone struct {
	id    string
	clone Clone
	disk  int64 // its disk limit, 0 for none
	lock  *runLock
}

// Prewarm makes a ready clone of snapshot unless one exists. Safe to call
// concurrently with Run; errors only mean there is no warm clone.
func (r *Runner) Prewarm(ctx context.Context, snapshot string) error {
	r.mu.Lock()
	if _, ok := r.warm[snapshot]; ok || r.warming[snapshot] {
		// A burst of runs ending together would otherwise each make a
		// clone, keep one and destroy the rest.
		r.mu.Unlock()
		return nil
	}
	if r.warming == nil {
		r.warming = map[string]bool{}
	}
	r.warming[snapshot] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.warming, snapshot)
		r.mu.Unlock()
	}()
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	id := r.Key("warm-" + hex.EncodeToString(b[:]))
	lock, err := acquireRunLock(filepath.Join(r.RunsDir, id))
	if err != nil {
		return err
	}
	c, err := r.clone(ctx, snapshot, id, r.WarmDisk)
	if err != nil {
		lock.release()
		os.RemoveAll(filepath.Join(r.RunsDir, id))
		return fmt.Errorf("prewarm %s: %w", snapshot, err)
	}
	if err := os.MkdirAll(filepath.Join(c.Root, "work"), 0o755); err != nil {
		lock.release()
		return err
	}
	w := &warmClone{id: id, clone: c, disk: r.WarmDisk, lock: lock}
	r.mu.Lock()
	if r.warm == nil {
		r.warm = map[string]*warmClone{}
	}
	// warming kept every other Prewarm of snapshot out, and only Prewarm
	// adds warm clones, so there is none of snapshot to replace.
	var evict *warmClone
	if len(r.warm) >= maxWarm {
		for k, old := range r.warm {
			evict = old
			delete(r.warm, k)
			break
		}
	}
	r.warm[snapshot] = w
	r.mu.Unlock()
	if evict != nil {
		return r.dropWarm(ctx, evict)
	}
	return nil
}

// takeWarm hands the warm clone of snapshot (if any, and made with the
// run's disk limit) to a run.
func (r *Runner) takeWarm(snapshot string, disk int64) *warmClone {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.warm[snapshot]
	if w == nil || w.disk != disk {
		return nil
	}
	delete(r.warm, snapshot)
	return w
}

func (r *Runner) dropWarm(ctx context.Context, w *warmClone) error {
	defer os.RemoveAll(filepath.Join(r.RunsDir, w.id))
	defer w.lock.release()
	return r.Storage.Destroy(ctx, w.id)
}

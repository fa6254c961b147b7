package linux

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd"
	cerrdefs "github.com/containerd/containerd/errdefs"
)

// Running returns the keys (LabelRun) of this owner's containers in the
// namespace, whether or not their task is still running (for crash
// recovery).
func (c *Containerd) Running(ctx context.Context) ([]string, error) {
	ctrs, err := c.kilnContainers(c.nsCtx(ctx))
	if err != nil {
		return nil, err
	}
	runs := make([]string, 0, len(ctrs))
	for _, k := range ctrs {
		runs = append(runs, k.run)
	}
	return runs, nil
}

type kilnContainer struct {
	ctr containerd.Container
	run string
}

func (c *Containerd) kilnContainers(ctx context.Context) ([]kilnContainer, error) {
	// By label in containerd's own query, so another owner's containers
	// (hundreds, on a busy host) are never loaded.
	ctrs, err := c.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q", LabelOwner, c.owner, LabelRun))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []kilnContainer
	for _, ctr := range ctrs {
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", ctr.ID(), err)
		}
		// The filter already did this; checked again because deleting
		// someone else's container is the one mistake Reap must not make.
		if run, ok := info.Labels[LabelRun]; ok && run != "" && info.Labels[LabelOwner] == c.owner {
			out = append(out, kilnContainer{ctr: ctr, run: run})
		}
	}
	return out, nil
}

// Reap kills and deletes every container of this owner (labels kiln.owner
// and kiln.run) whose key keep rejects. Other containers, another owner's
// above all, are never touched. Safe to
// call while other runs start: keep decides, and a run being started is one
// the caller keeps. Errors for single containers are collected; Reap goes
// on with the rest.
func (c *Containerd) Reap(ctx context.Context, keep func(runID string) bool) error {
	ctx = c.nsCtx(ctx)
	ctrs, err := c.kilnContainers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range ctrs {
		if keep(k.run) {
			continue
		}
		c.log.Info("reaping container", "container", k.ctr.ID(), "run", k.run)
		if err := deleteContainer(ctx, c.client, k.ctr, c.undoUserns); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := c.net.Teardown(ctx, k.run); err != nil {
			errs = append(errs, err)
		}
	}
	// Networks whose container is gone or was never made (a crash between
	// the two).
	runs, err := c.net.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, run := range runs {
		if keep(run) || slices.ContainsFunc(ctrs, func(k kilnContainer) bool { return k.run == run }) {
			continue
		}
		c.log.Info("reaping network", "run", run)
		if err := c.net.Teardown(ctx, run); err != nil {
			errs = append(errs, err)
		}
	}
	// Idmapped mounts of a start that died before its container was made.
	if err := c.reapIDMaps(ctx, keep); err != nil {
		errs = append(errs, err)
	}
	if err := c.reapGates(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reapIDMaps removes this launcher's idmapped mounts whose container does
// not exist and whose run keep rejects (a run being started is kept).
func (c *Containerd) reapIDMaps(ctx context.Context, keep func(runID string) bool) error {
	dead, err := c.deadEntries(ctx, idmapDir)
	if err != nil {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	var errs []error
	for name, id := range dead {
		// A container's own mounts go with it (deleteContainer); keep is
		// asked only about the mounts of starts that made none.
		run, ok := strings.CutPrefix(id, containerPrefix)
		if !ok || keep(run) {
			continue
		}
		c.log.Info("removing idmapped mounts of a dead start", "run", run)
		if err := removeIDMaps(filepath.Join(idmapDir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deadEntries returns the entries of dir named for a container of this
// launcher ("<owner hash>-<container id>") whose container does not
// exist, as entry name to container id. It asks containerd only when dir
// has such an entry; a missing dir has none.
func (c *Containerd) deadEntries(ctx context.Context, dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := ownerHash(c.ranges.owner) + "-"
	var alive map[string]bool
	dead := map[string]string{}
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		if alive == nil {
			if alive, err = c.containerIDs(ctx); err != nil {
				return nil, err
			}
		}
		if !alive[id] {
			dead[e.Name()] = id
		}
	}
	return dead, nil
}

// OwnedContainer is one of kiln's containers (a sandbox or a shim anchor)
// of any owner, as `kiln host gc` sees it.
type OwnedContainer struct {
	ID      string
	Owner   string // "" for a container made before owners were recorded
	DataDir string // the owner's data dir, "" if not recorded
	Anchor  bool   // a shim anchor, not a sandbox
}

// AllOwned lists kiln's containers in the namespace of every owner, this
// launcher's included. Only `kiln host gc` needs it: everything else looks
// at this owner's containers alone.
func (c *Containerd) AllOwned(ctx context.Context) ([]OwnedContainer, error) {
	ctx = c.nsCtx(ctx)
	// Several filters are OR'ed.
	ctrs, err := c.client.Containers(ctx, fmt.Sprintf("labels.%q", LabelRun), fmt.Sprintf("labels.%q", LabelShimAnchor))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]OwnedContainer, 0, len(ctrs))
	for _, ctr := range ctrs {
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			if cerrdefs.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("container %s: %w", ctr.ID(), err)
		}
		_, anchor := info.Labels[LabelShimAnchor]
		out = append(out, OwnedContainer{ID: ctr.ID(), Owner: info.Labels[LabelOwner], DataDir: info.Labels[LabelDataDir], Anchor: anchor})
	}
	return out, nil
}

// RemoveOwned kills and deletes the container id, whoever owns it. Only
// `kiln host gc` calls it, for containers of a data dir that no longer
// exists. A container already gone is success.
func (c *Containerd) RemoveOwned(ctx context.Context, id string) error {
	ctx = c.nsCtx(ctx)
	ctr, err := c.client.LoadContainer(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load container %s: %w", id, err)
	}
	if err := deleteContainer(ctx, c.client, ctr, c.undoUserns); err != nil {
		return err
	}
	return removeGates(id)
}

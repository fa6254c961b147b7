package linux

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	cerrdefs "github.com/containerd/containerd/errdefs"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Attach reconnects to the running container of runID (started by a
// process that has since died) and copies its output to console from now
// on: the shim keeps the console fifos open, so what the job wrote in
// between is waiting there, and a job that filled them was only blocked.
func (c *Containerd) Attach(ctx context.Context, runID string, console io.Writer) (sandbox.Sandbox, error) {
	ctx = c.nsCtx(ctx)
	id := containerPrefix + runID
	ctr, err := c.client.LoadContainer(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	} else if labels[LabelOwner] != c.owner {
		return nil, fmt.Errorf("container %s belongs to data dir %s %s, not this one (%s): %w",
			id, labels[LabelOwner], labels[LabelDataDir], c.owner, errdefs.ErrNotFound)
	}
	if console == nil {
		console = io.Discard
	}
	var task sandboxTask
	if labels[LabelShimAddress] != "" {
		t, err := attachShimTask(ctx, id, labels, console)
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		task = t
	} else {
		t, err := ctr.Task(ctx, cio.NewAttach(cio.WithStreams(nil, console, console)))
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("attach to %s: %w", id, err)
		}
		st, err := t.Status(ctx)
		if err != nil || st.Status != containerd.Running {
			if t.IO() != nil {
				t.IO().Cancel()
				t.IO().Close()
			}
			return nil, fmt.Errorf("task %s is %s, not running: %w", id, st.Status, errdefs.ErrNotFound)
		}
		task = containerdTask{client: c.client, task: t}
	}
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	statusC, err := task.Wait(life)
	if err != nil {
		stop()
		return nil, fmt.Errorf("wait task %s: %w", id, err)
	}
	s := &containerdSandbox{c: c, ctr: ctr, labels: labels, task: task, stop: stop, net: c.net.Adopt(runID), done: make(chan struct{})}
	if _, err := os.Lstat(c.gatePathOf(id)); err == nil {
		// A warm task's gate goes with it.
		s.gate = &gate{path: c.gatePathOf(id)}
	}
	if c.shims != nil {
		if spec, err := ctr.Spec(ctx); err == nil {
			s.release = c.shims.hold(spec.Annotations[shimGroupAnnotation])
		}
	}
	go s.watch(statusC) //nolint:gosec // G118: the watcher follows the sandbox past Start's ctx, until its init exits
	return s, nil
}

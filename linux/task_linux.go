package linux

import (
	"context"
	"fmt"
	"syscall"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/cio"
	cerrdefs "github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// sandboxTask is a sandbox's task (its init process) as kiln drives it:
// containerdTask when containerd keeps it, shimTask when only the shared
// shim serving it does.
type sandboxTask interface {
	// Wait returns a channel that receives the init's exit once; it stops
	// waiting (and receives an error) when ctx ends.
	Wait(ctx context.Context) (<-chan containerd.ExitStatus, error)
	// Start makes the created init run.
	Start(ctx context.Context) error
	// Kill sends sig to the init, or to every process of the task if all
	// is set. A task whose processes are gone answers a not-found error.
	Kill(ctx context.Context, sig syscall.Signal, all bool) error
	// Delete removes the task. Unless exited (the init's exit was seen),
	// it kills every process and waits for the init first. A task already
	// gone is success.
	Delete(ctx context.Context, exited bool) error
	// IO is the task's console: the fifos and the copies from them.
	IO() cio.IO
	// Pid is the init's host pid.
	Pid() uint32
	// Update sets the task's cgroup limits to r.
	Update(ctx context.Context, r *specs.LinuxResources) error
}

// containerdTask is a task created through containerd.
type containerdTask struct {
	client *containerd.Client
	task   containerd.Task
}

func (t containerdTask) Wait(ctx context.Context) (<-chan containerd.ExitStatus, error) {
	return t.task.Wait(ctx)
}

func (t containerdTask) Start(ctx context.Context) error { return t.task.Start(ctx) }

func (t containerdTask) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	var opts []containerd.KillOpts
	if all {
		opts = append(opts, containerd.WithKillAll)
	}
	return t.task.Kill(ctx, sig, opts...)
}

func (t containerdTask) Delete(ctx context.Context, exited bool) error {
	// After the init's exit nothing is left to kill (see
	// containerdSandbox.Kill); should the plain delete fail anyway, the
	// killing delete follows.
	if exited && deleteExitedTask(ctx, t.task) == nil {
		return nil
	}
	return deleteTask(ctx, t.client, t.task)
}

func (t containerdTask) IO() cio.IO { return t.task.IO() }

func (t containerdTask) Pid() uint32 { return t.task.Pid() }

func (t containerdTask) Update(ctx context.Context, r *specs.LinuxResources) error {
	return t.task.Update(ctx, containerd.WithResources(r))
}

// deleteContainer kills every process of ctr's task, deletes the task,
// calls undo (when not nil) and deletes the container. Whatever no longer
// exists counts as deleted.
func deleteContainer(ctx context.Context, client *containerd.Client, ctr containerd.Container, undo func(context.Context, containerd.Container) error) error {
	labels, err := ctr.Labels(ctx)
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: %w", ctr.ID(), err)
	}
	if labels[LabelShimAddress] != "" {
		// Its task is the shim's alone; containerd has none to delete.
		if err := deleteShimTask(ctx, ctr.ID(), labels); err != nil {
			return err
		}
		return deleteRecord(ctx, ctr, undo)
	}
	task, err := ctr.Task(ctx, nil)
	switch {
	case cerrdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load task %s: %w", ctr.ID(), err)
	default:
		if err := deleteTask(ctx, client, task); err != nil {
			return err
		}
	}
	// Loading the task asks its shim for its state; a shared shim that no
	// longer knows the task answers "not found" while containerd still
	// lists it, and deleting the container then would leave that task
	// (and its bundle) behind for good: the next task of the same id fails
	// with "already exists". Delete it through the task service, which
	// goes by containerd's own list, while the container still exists.
	if err := removeTask(ctx, client, ctr.ID()); err != nil {
		return err
	}
	return deleteRecord(ctx, ctr, undo)
}

// deleteRecord calls undo (when not nil) and deletes ctr, whose task is
// gone.
func deleteRecord(ctx context.Context, ctr containerd.Container, undo func(context.Context, containerd.Container) error) error {
	if undo != nil {
		if err := undo(ctx, ctr); err != nil && !cerrdefs.IsNotFound(err) {
			return err
		}
	}
	if err := ctr.Delete(ctx); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", ctr.ID(), err)
	}
	return nil
}

// removeTask deletes the task of container id from containerd's task list,
// whatever its shim says; the container must exist. No task is success.
func removeTask(ctx context.Context, client *containerd.Client, id string) error {
	_, err := client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: id})
	if err != nil {
		if err = cerrdefs.FromGRPC(err); !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("delete task %s: %w", id, err)
		}
	}
	return nil
}

func deleteExitedTask(ctx context.Context, task containerd.Task) error {
	if _, err := task.Delete(ctx); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", task.ID(), err)
	}
	return nil
}

func deleteTask(ctx context.Context, client *containerd.Client, task containerd.Task) error {
	// WithProcessKill kills all of the task's processes and waits for the
	// init process before the delete.
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err != nil && !cerrdefs.IsNotFound(err) {
		// runsc cannot signal a container in the "created" state (its
		// start failed, or it never came), and the client refuses to
		// delete a task it could not stop; the shim's own delete ends it.
		if st, serr := task.Status(ctx); serr == nil && st.Status == containerd.Created {
			_, err = client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: task.ID()})
			if task.IO() != nil {
				task.IO().Cancel()
				_ = task.IO().Close()
			}
		}
	}
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", task.ID(), err)
	}
	return nil
}

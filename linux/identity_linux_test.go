package linux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// ownerLauncher opens another launcher on the containerd at addr (same
// namespace) for owner, with shared shims in its own dir.
func ownerLauncher(t testing.TB, addr, owner string) *Containerd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	dir := t.TempDir()
	c, err := NewContainerd(ctx, ContainerdConfig{Address: addr, Owner: owner, DataDir: dir, ShareShimDir: dir, ShimGroups: 1,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatalf("NewContainerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Two data dirs' launchers on one containerd namespace: each lists, reaps
// and attaches to its own sandboxes only, whatever their state.
func TestContainerdOwnersApart(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	a := ownerLauncher(t, addr, "aaaaaaaaaaaaaaaa")
	b := ownerLauncher(t, addr, "bbbbbbbbbbbbbbbb")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	startSet := func(c *Containerd) (running sandbox.Sandbox, runs []string) {
		spec, console := shSpec(t, `echo up; sleep 1000`)
		running = start(t, c, spec)
		waitFor(t, console, "up\n")
		// One that has exited, and one whose task is gone, as a crash
		// leaves them.
		spec2, _ := shSpec(t, `exit 3`)
		wait(t, start(t, c, spec2))
		spec3, _ := shSpec(t, `exit 0`)
		sb3 := start(t, c, spec3)
		wait(t, sb3)
		if err := sb3.(*containerdSandbox).deleteTaskOnly(ctx); err != nil {
			t.Fatal(err)
		}
		return running, slices.Sorted(slices.Values([]string{spec.RunID, spec2.RunID, spec3.RunID}))
	}
	_, aRuns := startSet(a)
	bLive, bRuns := startSet(b)

	for _, tc := range []struct {
		name string
		c    *Containerd
		want []string
	}{{"a", a, aRuns}, {"b", b, bRuns}} {
		got, err := tc.c.Running(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Sort(got); !slices.Equal(got, tc.want) {
			t.Errorf("Running of %s = %v, want its own %v", tc.name, got, tc.want)
		}
	}
	if _, err := a.Attach(ctx, bRuns[0], nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a.Attach(b's sandbox) = %v, want ErrNotFound", err)
	}

	var asked []string
	if err := a.Reap(ctx, func(run string) bool { asked = append(asked, run); return false }); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	if slices.Sort(asked); !slices.Equal(asked, aRuns) {
		t.Errorf("a's Reap asked about %v, want only its own %v", asked, aRuns)
	}
	if got, _ := a.Running(ctx); len(got) != 0 {
		t.Errorf("after a's Reap, a has %v", got)
	}
	got, err := b.Running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Sort(got); !slices.Equal(got, bRuns) {
		t.Errorf("after a's Reap, b has %v, want all of %v", got, bRuns)
	}
	waitCtx, waitCancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer waitCancel()
	if _, err := bLive.Wait(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("b's live sandbox Wait = %v, want it still running", err)
	}
	// Both owners' anchors are there, labelled for gc.
	all, err := a.AllOwned(ctx)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]int{}
	for _, o := range all {
		if o.Anchor {
			anchors[o.Owner]++
			if o.DataDir == "" {
				t.Errorf("anchor %s records no data dir", o.ID)
			}
		}
	}
	if anchors["aaaaaaaaaaaaaaaa"] == 0 || anchors["bbbbbbbbbbbbbbbb"] == 0 {
		t.Errorf("anchors by owner = %v, want some of each", anchors)
	}
}

// A task whose delete was cut off (its kiln process killed mid-call) can
// stay in containerd's task list while its shared shim no longer knows it:
// loading it says "not found". Reap must still leave no task behind, or
// the next run of the same key fails with "task ...: already exists".
// Without Reap's removeTask this failed in about one run of three.
func TestReapLeavesNoTask(t *testing.T) {
	c, _ := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for i := range 40 {
		spec, console := shSpec(t, `echo up; sleep 1000`)
		sb, err := c.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, console, "up\n")
		// As a SIGKILL of the process deleting the sandbox would: the
		// call is cut off at some point on the way.
		sbx := sb.(*containerdSandbox)
		if err := sbx.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		wait(t, sb)
		cut, cutCancel := context.WithTimeout(ctx, time.Duration(i%30)*150*time.Microsecond)
		_, _ = c.client.TaskService().Delete(cut, &tasks.DeleteTaskRequest{ContainerID: sbx.ID()})
		cutCancel()
		if err := c.Reap(ctx, func(string) bool { return false }); err != nil {
			t.Fatalf("round %d: Reap: %v", i, err)
		}
		sbx.stop()
		sbx.release()
		spec.Args = []string{"/bin/sh", "-c", "echo again"}
		again, err := c.Start(ctx, spec)
		if err != nil {
			t.Fatalf("round %d: start %s again after a reap: %v", i, spec.RunID, err)
		}
		wait(t, again)
		if err := again.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkReapWithForeign measures one Reap of a launcher with nothing to
// reap: with no other containers (baseline), and with 500 containers of
// another owner in the same namespace, which the label query keeps from
// being loaded at all; "load-all" is what Reap did before owners (list
// every kiln container, then look at each).
func BenchmarkReapWithForeign(b *testing.B) {
	addr := testsupport.StartContainerd(b)
	mine := ownerLauncher(b, addr, "aaaaaaaaaaaaaaaa")
	other := ownerLauncher(b, addr, "bbbbbbbbbbbbbbbb")
	ctx := other.nsCtx(context.Background())
	reap := func(b *testing.B) {
		for b.Loop() {
			if err := mine.Reap(context.Background(), func(string) bool { return false }); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("foreign=0", reap)
	root := testsupport.BusyboxRootfs(b)
	const foreign = 500
	for i := range foreign {
		// Containers only (no task): what Reap has to list past.
		id := fmt.Sprintf("%sforeign-%d", containerPrefix, i)
		spec, _ := shSpec(b, "true")
		spec.RunID, spec.Root = fmt.Sprintf("foreign-%d", i), root
		opts, err := specOpts(spec, nil, other.harden)
		if err != nil {
			b.Fatal(err)
		}
		ctr, err := other.client.NewContainer(ctx, id,
			containerd.WithContainerLabels(other.labels(map[string]string{LabelRun: spec.RunID})),
			containerd.WithRuntime(other.client.Runtime(), nil),
			containerd.WithNewSpec(opts...))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = ctr.Delete(context.WithoutCancel(ctx)) })
	}
	b.Run(fmt.Sprintf("foreign=%d", foreign), reap)
	b.Run(fmt.Sprintf("foreign=%d/load-all", foreign), func(b *testing.B) {
		for b.Loop() {
			ctrs, err := mine.client.Containers(ctx, fmt.Sprintf("labels.%q", LabelRun))
			if err != nil {
				b.Fatal(err)
			}
			for _, ctr := range ctrs {
				if _, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	if got, _ := other.Running(ctx); len(got) != foreign {
		b.Fatalf("other owner has %d containers after the reaps, want %d", len(got), foreign)
	}
}

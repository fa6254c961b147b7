package linux

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	cerrdefs "github.com/containerd/containerd/errdefs"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

func TestShimAnchorLabelKnownToTests(t *testing.T) {
	if testsupport.ShimAnchorLabel != LabelShimAnchor {
		t.Fatalf("testsupport.ShimAnchorLabel = %q, want %q", testsupport.ShimAnchorLabel, LabelShimAnchor)
	}
	if testsupport.ShimAddressLabel != LabelShimAddress || testsupport.ShimBundleLabel != LabelBundle {
		t.Fatalf("testsupport's shim task labels %q %q, want %q %q", testsupport.ShimAddressLabel, testsupport.ShimBundleLabel, LabelShimAddress, LabelBundle)
	}
}

// shims maps the shim group (the -id a shim was started with) to the PIDs
// of the shim processes serving the containerd at addr.
func shims(t *testing.T, addr string) map[string][]int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]int{}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" || !slices.Contains(args, addr) {
			continue
		}
		if i := slices.Index(args, "-id"); i >= 0 && i+1 < len(args) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out[args[i+1]] = append(out[args[i+1]], pid)
		}
	}
	return out
}

// groupOf is the shim group the container of run belongs to.
func groupOf(t *testing.T, c *Containerd, run string) string {
	t.Helper()
	ctx := c.nsCtx(context.Background())
	ctr, err := c.client.LoadContainer(ctx, containerPrefix+run)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return spec.Annotations[shimGroupAnnotation]
}

// anchorStates maps each anchor container to its task's status.
func anchorStates(t *testing.T, c *Containerd) map[string]containerd.ProcessStatus {
	t.Helper()
	ctx := c.nsCtx(context.Background())
	ctrs, err := c.client.Containers(ctx, `labels."`+LabelShimAnchor+`"`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]containerd.ProcessStatus{}
	for _, ctr := range ctrs {
		task, err := ctr.Task(ctx, nil)
		if err != nil {
			out[ctr.ID()] = "no task"
			continue
		}
		st, err := task.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[ctr.ID()] = st.Status
	}
	return out
}

func TestSharedShims(t *testing.T) {
	shimDir := t.TempDir()
	c, addr := newLauncherWith(t, ContainerdConfig{ShareShimDir: shimDir, ShimGroups: 2})
	ctx := context.Background()
	created := map[string]containerd.ProcessStatus{c.shims.prefix + "0": containerd.Created, c.shims.prefix + "1": containerd.Created}
	if got := anchorStates(t, c); !maps.Equal(got, created) {
		t.Fatalf("after NewContainerd, anchors = %v, want %v", got, created)
	}

	t.Run("runs one after another reuse one shim", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			spec, console := shSpec(t, `echo hello`)
			sb := start(t, c, spec)
			if g := groupOf(t, c, spec.RunID); g != c.shims.prefix+"0" {
				t.Errorf("run %d in group %q, want the first idle one", i, g)
			}
			if exit := wait(t, sb); exit.Code != 0 || console.String() != "hello\n" {
				t.Fatalf("exit %+v, console %q", exit, console.String())
			}
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if got := shims(t, addr); len(got) != 2 || len(got[c.shims.prefix+"0"]) != 1 || len(got[c.shims.prefix+"1"]) != 1 {
			t.Errorf("shim processes by group = %v, want one for each of the two groups", got)
		}
	})

	t.Run("live sandboxes never share a group", func(t *testing.T) {
		groups := map[string]string{}
		var sbs []sandbox.Sandbox
		for i := 0; i < 3; i++ {
			spec, console := shSpec(t, `echo up; sleep 1000`)
			sb := start(t, c, spec)
			waitFor(t, console, "up\n")
			g := groupOf(t, c, spec.RunID)
			if other, dup := groups[g]; dup {
				t.Errorf("runs %s and %s share group %s", other, spec.RunID, g)
			}
			groups[g] = spec.RunID
			sbs = append(sbs, sb)
		}
		if got := shims(t, addr); len(got) != 3 {
			t.Errorf("shim processes by group = %v, want a third group made on demand", got)
		}
		for _, sb := range sbs {
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// Deleting the last container of a group leaves its shim alive.
		if got := shims(t, addr); len(got) != 3 {
			t.Errorf("after the deletes, shim processes by group = %v, want all three kept", got)
		}
	})

	t.Run("reaping runs leaves the anchors", func(t *testing.T) {
		spec, _ := shSpec(t, `sleep 1000`)
		start(t, c, spec)
		if err := c.Reap(ctx, func(string) bool { return false }); err != nil {
			t.Fatal(err)
		}
		runs, err := c.Running(ctx)
		if err != nil || len(runs) != 0 {
			t.Fatalf("Running after Reap = %v, %v; want none", runs, err)
		}
		want := map[string]containerd.ProcessStatus{}
		for i := range 3 {
			want[c.shims.prefix+strconv.Itoa(i)] = containerd.Created
		}
		if got := anchorStates(t, c); !maps.Equal(got, want) {
			t.Errorf("anchors after Reap = %v, want %v", got, want)
		}
	})

	t.Run("a new launcher adopts the anchors", func(t *testing.T) {
		c2, err := NewContainerd(ctx, ContainerdConfig{Address: addr, ShareShimDir: shimDir, ShimGroups: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c2.Close() })
		before := shims(t, addr)
		spec, _ := shSpec(t, `true`)
		if exit := run(t, c2, spec); exit.Code != 0 {
			t.Fatalf("exit %+v", exit)
		}
		if after := shims(t, addr); !reflect.DeepEqual(after, before) {
			t.Errorf("shims %v became %v: the existing groups were not reused", before, after)
		}
	})
}

// After a restart, a sandbox the new launcher attaches to keeps its shim
// to itself.
func TestSharedShimAttach(t *testing.T) {
	shimDir := t.TempDir()
	c, addr := newLauncherWith(t, ContainerdConfig{ShareShimDir: shimDir, ShimGroups: 2})
	spec, console := shSpec(t, `echo up; sleep 1000`)
	start(t, c, spec)
	waitFor(t, console, "up\n")
	held := groupOf(t, c, spec.RunID)

	ctx := context.Background()
	c2, err := NewContainerd(ctx, ContainerdConfig{Address: addr, ShareShimDir: shimDir, ShimGroups: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	attached, err := c2.Attach(ctx, spec.RunID, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { attached.Delete(context.Background()) })
	for i := 0; i < 3; i++ {
		next, _ := shSpec(t, `true`)
		sb := start(t, c2, next)
		if g := groupOf(t, c2, next.RunID); g == held {
			t.Errorf("new run %d put on group %s, which the attached run %s holds", i, g, spec.RunID)
		}
		wait(t, sb)
		if err := sb.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A shim that dies takes its runs with it; the group's anchor is made anew
// and later runs work.
func TestSharedShimDies(t *testing.T) {
	c, addr := newLauncherWith(t, ContainerdConfig{ShareShimDir: t.TempDir(), ShimGroups: 1})
	spec, console := shSpec(t, `echo up; sleep 1000`)
	sb := start(t, c, spec)
	waitFor(t, console, "up\n")
	g := groupOf(t, c, spec.RunID)
	pids := shims(t, addr)[g]
	if len(pids) != 1 {
		t.Fatalf("shims of group %s: %v", g, pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, _ = sb.Wait(ctx) // the run is over, however containerd reports it
	// Until containerd has cleaned up after the dead shim, the delete
	// finds the shim's connection closed.
	deadline := time.Now().Add(testTimeout)
	for {
		err := sb.Delete(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Delete of a run whose shim died: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var spec2ID string
	for {
		spec2, console2 := shSpec(t, `echo again`)
		sb2, err := c.Start(ctx, spec2)
		if err == nil {
			spec2ID = spec2.RunID
			t.Cleanup(func() { sb2.Delete(context.Background()) })
			if exit := wait(t, sb2); exit.Code != 0 || console2.String() != "again\n" {
				t.Fatalf("after the shim died: exit %+v, console %q", exit, console2.String())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Start after the shim died: %v", err)
		}
		t.Logf("Start after the shim died: %v", err)
		time.Sleep(100 * time.Millisecond)
	}
	if g2 := groupOf(t, c, spec2ID); g2 != g {
		t.Errorf("next run in group %s, want %s (free again)", g2, g)
	}
	if st := anchorStates(t, c); !maps.Equal(st, map[string]containerd.ProcessStatus{g: containerd.Created}) {
		t.Errorf("anchors after recovery = %v, want only %s, created again", st, g)
	}
}

// With sharing off every container gets its own shim and no anchor exists.
func TestShimPerContainer(t *testing.T) {
	c, addr := newLauncherWith(t, ContainerdConfig{})
	spec, console := shSpec(t, `echo up; sleep 1000`)
	sb := start(t, c, spec)
	waitFor(t, console, "up\n")
	if got := shims(t, addr); len(got) != 1 || len(got[containerPrefix+spec.RunID]) != 1 {
		t.Errorf("shims = %v, want one for %s", got, spec.RunID)
	}
	if err := sb.Delete(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := anchorStates(t, c); len(got) != 0 {
		t.Errorf("anchors = %v, want none", got)
	}
}

// Two kiln processes on one host (exec beside the worker) share the anchors
// of their data dir: launchers starting together all come up, and each
// anchor exists once. Another data dir on the same namespace has its own.
func TestSharedShimsTwoLaunchers(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	launchers := make([]*Containerd, 4)
	errs := make(chan error, len(launchers))
	for i := range launchers {
		go func() {
			c, err := NewContainerd(ctx, ContainerdConfig{Address: addr, ShareShimDir: dirs[i%2], ShimGroups: 3})
			launchers[i] = c
			errs <- err
		}()
	}
	for range launchers {
		if err := <-errs; err != nil {
			t.Fatalf("NewContainerd: %v", err)
		}
	}
	for _, c := range launchers {
		t.Cleanup(func() { c.Close() })
	}
	if launchers[0].shims.prefix == launchers[1].shims.prefix {
		t.Fatalf("two data dirs, one anchor prefix %q", launchers[0].shims.prefix)
	}
	want := map[string]containerd.ProcessStatus{}
	for _, c := range launchers[:2] {
		for i := range 3 {
			want[c.shims.prefix+strconv.Itoa(i)] = containerd.Created
		}
	}
	if got := anchorStates(t, launchers[0]); !maps.Equal(got, want) {
		t.Fatalf("anchors = %v, want %v", got, want)
	}
	for i, c := range launchers {
		spec, console := shSpec(t, `echo ok`)
		if exit := run(t, c, spec); exit.Code != 0 || console.String() != "ok\n" {
			t.Errorf("launcher %d: exit %+v, console %q", i, exit, console.String())
		}
	}
}

// A run on a shared shim is a task of that shim alone: containerd keeps
// its container record (with the labels reaping goes by) and lists no
// task for it, so it started no `shim start` process for it. A launcher
// that did not start the run (a worker restarted after SIGKILL) attaches
// to it, and one that reaps it leaves no runc container, bundle or task.
func TestSharedShimTaskIsTheShims(t *testing.T) {
	shimDir := t.TempDir()
	c, addr := newLauncherWith(t, ContainerdConfig{ShareShimDir: shimDir, ShimGroups: 1})
	ctx := c.nsCtx(context.Background())
	spec, console := shSpec(t, `echo up; sleep 1000`)
	start(t, c, spec)
	waitFor(t, console, "up\n")
	id := containerPrefix + spec.RunID

	ctr, err := c.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	labels, err := ctr.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundle := labels[LabelBundle]
	if labels[LabelShimAddress] == "" || bundle == "" {
		t.Fatalf("labels %v: no shim address or bundle", labels)
	}
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
		t.Errorf("bundle: %v", err)
	}
	tasks, err := c.client.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.Tasks {
		if tk.ID == id {
			t.Errorf("containerd lists task %s (%v), want it the shim's alone", id, tk.Status)
		}
	}
	if _, err := os.Stat(filepath.Join(runcRoot, DefaultContainerdNamespace, id)); err != nil {
		t.Errorf("runc state of the running task: %v", err)
	}

	c2, err := NewContainerd(ctx, ContainerdConfig{Address: addr, ShareShimDir: shimDir, ShimGroups: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close() })
	var console2 syncBuffer
	sb2, err := c2.Attach(ctx, spec.RunID, &console2)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	// The init (PID 1 of its namespace) has no handler for a gentler one.
	if err := sb2.Signal(ctx, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	if exit := wait(t, sb2); exit.Signal != "SIGKILL" {
		t.Errorf("exit after SIGKILL through the attached sandbox = %+v", exit)
	}

	c3, err := NewContainerd(ctx, ContainerdConfig{Address: addr, ShareShimDir: shimDir, ShimGroups: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c3.Close() })
	if err := c3.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.LoadContainer(ctx, id); !cerrdefs.IsNotFound(err) {
		t.Errorf("container after Reap: %v, want not found", err)
	}
	for _, p := range []string{bundle, filepath.Join(runcRoot, DefaultContainerdNamespace, id)} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Reap: %v, want gone", p, err)
		}
	}
	// Deleting the sandbox that was reaped under it is still success.
	if err := sb2.Delete(ctx); err != nil {
		t.Errorf("Delete after Reap: %v", err)
	}
}

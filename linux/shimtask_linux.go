package linux

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/cio"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Labels of a sandbox whose task only its shared shim knows (see
// shimTask): where to reach that shim, and the task's bundle.
const (
	LabelShimAddress = "kiln.shim-address"
	LabelBundle      = "kiln.bundle"
)

// bundleDir holds the bundles of tasks kiln creates on shared shims
// itself; like containerd's own bundles they go with a boot.
const bundleDir = runDir + "/tasks"

// runcRoot is where the runc shim keeps runc's state when its options name
// no other root (kiln passes none), per containerd namespace.
const runcRoot = "/run/containerd/runc"

// shimTask is a task kiln creates by asking the shared shim of its group
// for it directly, over the shim's task API, as containerd itself would.
// containerd keeps the container record (labels, spec: listing, reaping
// and attaching go by it) but never hears of the task, and so starts no
// `containerd-shim-runc-v2 start` process to find the group's shim when
// the task is made, nor a `containerd-shim-runc-v2 delete` (with its
// `runc delete --force`) when containerd closes its connection to the
// shim after the delete. The shim's own work stays: runc create, init,
// start and delete.
//
// The container record carries LabelShimAddress and LabelBundle, so that
// a process that did not create the task (a restarted worker, the reaper,
// `kiln host gc`) finds it without the anchor.
type shimTask struct {
	id      string
	pid     uint32
	bundle  string
	conn    *ttrpc.Client
	svc     taskv2.TaskService
	io      cio.IO
	deleted bool // by Delete, which is not called concurrently
}

// fromShim turns an error of a call to a shim into containerd's kinds
// (errdefs), keeping ttrpc.ErrClosed: the shim is gone.
func fromShim(err error) error {
	if errors.Is(err, ttrpc.ErrClosed) {
		return err
	}
	return cerrdefs.FromGRPC(err)
}

// dialShim connects to the shim at address ("unix://path", as in a
// bundle's address file).
func dialShim(ctx context.Context, address string) (*ttrpc.Client, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "unix", strings.TrimPrefix(address, "unix://"))
	if err != nil {
		return nil, fmt.Errorf("connect to shim %s: %w", address, err)
	}
	return ttrpc.NewClient(conn), nil
}

// shimBundle returns the bundle directory of container id.
func (c *Containerd) shimBundle(id string) string {
	return filepath.Join(bundleDir, ownerHash(c.ranges.owner)+"-"+id)
}

// newShimTask creates the task of container id from spec on the shim at
// address, in a bundle it makes at bundle, with console as its stdout and
// stderr. On error nothing of it is left. ctx is namespaced.
func newShimTask(ctx context.Context, id, address, bundle string, spec *specs.Spec, console io.Writer) (_ *shimTask, retErr error) {
	if err := writeBundle(bundle, spec); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(bundle)
		}
	}()
	conn, err := dialShim(ctx, address)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			conn.Close()
		}
	}()
	cons, err := cio.NewCreator(cio.WithStreams(nil, console, console))(id)
	if err != nil {
		return nil, fmt.Errorf("console of %s: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			cons.Cancel()
			_ = cons.Close()
		}
	}()
	cfg := cons.Config()
	t := &shimTask{id: id, bundle: bundle, conn: conn, svc: taskv2.NewTaskClient(conn), io: cons}
	// No rootfs mounts (the spec's root is the clone, used in place) and
	// no options: the shim's defaults are those of a container with no
	// runtime options, as kiln's runc containers are.
	r, err := t.svc.Create(ctx, &taskv2.CreateTaskRequest{
		ID: id, Bundle: bundle, Stdin: cfg.Stdin, Stdout: cfg.Stdout, Stderr: cfg.Stderr, Terminal: cfg.Terminal,
	})
	if err != nil {
		return nil, fmt.Errorf("create task %s on shim %s: %w", id, address, fromShim(err))
	}
	t.pid = r.Pid
	return t, nil
}

// writeBundle makes the bundle directory with spec as its config.json,
// as containerd's NewBundle does: 0700, or 0710 with the group of the
// sandbox's root when it has a user namespace, so runc's init there can
// reach it.
func writeBundle(bundle string, spec *specs.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("bundle of %s: %w", filepath.Base(bundle), err)
	}
	if err := os.MkdirAll(filepath.Dir(bundle), 0o711); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	// A bundle left by a crash between its making and the container's
	// (nothing refers to it) is made anew.
	if err := os.RemoveAll(bundle); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if spec.Linux != nil {
		for _, m := range spec.Linux.GIDMappings {
			if m.ContainerID == 0 && m.HostID != 0 {
				if err := os.Chown(bundle, -1, int(m.HostID)); err != nil {
					return fmt.Errorf("bundle: %w", err)
				}
				if err := os.Chmod(bundle, 0o710); err != nil {
					return fmt.Errorf("bundle: %w", err)
				}
			}
		}
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	return nil
}

func (t *shimTask) Wait(ctx context.Context) (<-chan containerd.ExitStatus, error) {
	ch := make(chan containerd.ExitStatus, 1)
	go func() {
		r, err := t.svc.Wait(ctx, &taskv2.WaitRequest{ID: t.id})
		if err != nil {
			ch <- *containerd.NewExitStatus(containerd.UnknownExitStatus, time.Time{}, fmt.Errorf("wait task %s: %w", t.id, fromShim(err)))
			return
		}
		ch <- *containerd.NewExitStatus(r.ExitStatus, r.ExitedAt.AsTime(), nil)
	}()
	return ch, nil
}

func (t *shimTask) Start(ctx context.Context) error {
	if _, err := t.svc.Start(ctx, &taskv2.StartRequest{ID: t.id}); err != nil {
		return fromShim(err)
	}
	return nil
}

func (t *shimTask) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	if _, err := t.svc.Kill(ctx, &taskv2.KillRequest{ID: t.id, Signal: uint32(sig), All: all}); err != nil { //nolint:gosec // G115: signal numbers are small and positive
		return fromShim(err)
	}
	return nil
}

func (t *shimTask) Delete(ctx context.Context, exited bool) error {
	if t.deleted {
		return nil
	}
	err := removeShimTask(ctx, t.svc, t.id, t.bundle, exited)
	if errors.Is(err, ttrpc.ErrClosed) {
		err = forgetDeadShimTask(ctx, t.id, t.bundle)
	}
	if err != nil {
		return err
	}
	t.deleted = true
	if t.io != nil {
		t.io.Cancel()
		_ = t.io.Close()
	}
	t.conn.Close()
	return nil
}

func (t *shimTask) IO() cio.IO { return t.io }

func (t *shimTask) Pid() uint32 { return t.pid }

func (t *shimTask) Update(ctx context.Context, r *specs.LinuxResources) error {
	a, err := typeurl.MarshalAny(r)
	if err != nil {
		return fmt.Errorf("update task %s: %w", t.id, err)
	}
	if _, err := t.svc.Update(ctx, &taskv2.UpdateTaskRequest{ID: t.id, Resources: protobuf.FromAny(a)}); err != nil {
		return fmt.Errorf("update task %s: %w", t.id, fromShim(err))
	}
	return nil
}

// removeShimTask deletes task id from the shim svc talks to, killing its
// processes and waiting for its init first unless exited, then asks the
// shim to shut down (it does only when it serves no more tasks: its anchor
// is gone, `kiln host gc`) and removes bundle. A task the shim does not
// know is success.
func removeShimTask(ctx context.Context, svc taskv2.TaskService, id, bundle string, exited bool) error {
	if !exited {
		_, err := svc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true})
		// Not found: already exited, or no such task (Wait says which).
		if err != nil && !cerrdefs.IsNotFound(fromShim(err)) {
			return fmt.Errorf("kill task %s: %w", id, fromShim(err))
		}
		if _, err := svc.Wait(ctx, &taskv2.WaitRequest{ID: id}); err != nil && !cerrdefs.IsNotFound(fromShim(err)) {
			return fmt.Errorf("wait task %s: %w", id, fromShim(err))
		}
	}
	_, err := svc.Delete(ctx, &taskv2.DeleteRequest{ID: id})
	switch {
	case cerrdefs.IsNotFound(fromShim(err)):
		// The shim does not know the task: another shim of the same
		// group (made anew after the one that created it died) answers
		// at the address, and runc's container may be left.
		if err := forceDeleteRunc(ctx, id); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("delete task %s: %w", id, fromShim(err))
	}
	// As containerd does after every delete; the shim ignores it while it
	// serves any task (its anchor's above all).
	_, _ = svc.Shutdown(ctx, &taskv2.ShutdownRequest{ID: id})
	if err := os.RemoveAll(bundle); err != nil {
		return fmt.Errorf("remove bundle of %s: %w", id, err)
	}
	return nil
}

// attachShimTask reconnects to the running task of container id on the
// shim its labels name, copying its output to console from now on. A task
// that is not running, or a shim that is gone, is errdefs.ErrNotFound's
// business of the caller: it returns an error wrapping cerrdefs.ErrNotFound.
func attachShimTask(ctx context.Context, id string, labels map[string]string, console io.Writer) (*shimTask, error) {
	address := labels[LabelShimAddress]
	conn, err := dialShim(ctx, address)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, cerrdefs.ErrNotFound)
	}
	svc := taskv2.NewTaskClient(conn)
	st, err := svc.State(ctx, &taskv2.StateRequest{ID: id})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("task %s: %w", id, fromShim(err))
	}
	if st.Status != tasktypes.Status_RUNNING {
		conn.Close()
		return nil, fmt.Errorf("task %s is %s, not running: %w", id, st.Status, cerrdefs.ErrNotFound)
	}
	cons, err := cio.NewAttach(cio.WithStreams(nil, console, console))(fifoSet(st))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("attach to %s: %w", id, err)
	}
	return &shimTask{id: id, pid: st.Pid, bundle: labels[LabelBundle], conn: conn, svc: svc, io: cons}, nil
}

// fifoSet is the console fifos the shim reports for a task, whose closing
// removes them and their directory, as containerd's client does for a
// task it attaches to.
func fifoSet(st *taskv2.StateResponse) *cio.FIFOSet {
	fifos := []string{st.Stdin, st.Stdout, st.Stderr}
	return cio.NewFIFOSet(cio.Config{Stdin: st.Stdin, Stdout: st.Stdout, Stderr: st.Stderr, Terminal: st.Terminal}, func() error {
		return removeFifos(fifos)
	})
}

func removeFifos(fifos []string) error {
	var errs []error
	dirs := map[string]bool{}
	for _, f := range fifos {
		if fi, err := os.Lstat(f); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		dirs[filepath.Dir(f)] = true
	}
	for d := range dirs {
		_ = os.Remove(d) // only once empty
	}
	return errors.Join(errs...)
}

// deleteShimTask removes the task of container id that only its shim
// knows (labels name the shim and the bundle), killing what runs. When
// the shim is gone its runc container may still be there (a shim killed
// leaves runc's init behind): `runc delete --force` removes it, as
// containerd's cleanup after a dead shim does. ctx is namespaced.
func deleteShimTask(ctx context.Context, id string, labels map[string]string) error {
	conn, err := dialShim(ctx, labels[LabelShimAddress])
	if err != nil {
		return forgetDeadShimTask(ctx, id, labels[LabelBundle])
	}
	defer conn.Close()
	svc := taskv2.NewTaskClient(conn)
	var fifos []string
	if st, err := svc.State(ctx, &taskv2.StateRequest{ID: id}); err == nil {
		fifos = []string{st.Stdin, st.Stdout, st.Stderr}
	}
	err = removeShimTask(ctx, svc, id, labels[LabelBundle], false)
	if errors.Is(err, ttrpc.ErrClosed) {
		err = forgetDeadShimTask(ctx, id, labels[LabelBundle])
	}
	if err != nil {
		return err
	}
	// The fifos of a console no process reads any more (its worker died).
	return removeFifos(fifos)
}

// forgetDeadShimTask removes what is left of task id after its shim died:
// runc's container (a shim killed leaves runc's init behind) and bundle.
func forgetDeadShimTask(ctx context.Context, id, bundle string) error {
	if err := forceDeleteRunc(ctx, id); err != nil {
		return err
	}
	if err := os.RemoveAll(bundle); err != nil {
		return fmt.Errorf("remove bundle of %s: %w", id, err)
	}
	return nil
}

// forceDeleteRunc kills and deletes runc's container id, if it exists.
func forceDeleteRunc(ctx context.Context, id string) error {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return err
	}
	root := filepath.Join(runcRoot, ns)
	if _, err := os.Stat(filepath.Join(root, id)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	out, err := exec.CommandContext(ctx, "runc", "--root", root, "delete", "--force", id).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc delete --force %s: %w: %s", id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// shimAddress returns the address of the shim that serves the task with
// init process pid: the shim is the init's parent (the subreaper it was
// reparented to once `runc create` exited), and its working directory is
// the bundle of the container it was started for, where `shim start`
// wrote the address.
func shimAddress(pid uint32) (string, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", fmt.Errorf("shim of pid %d: %w", pid, err)
	}
	var ppid int
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			ppid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if ppid <= 1 {
		return "", fmt.Errorf("shim of pid %d: no parent", pid)
	}
	addr, err := os.ReadFile(fmt.Sprintf("/proc/%d/cwd/address", ppid))
	if err != nil {
		return "", fmt.Errorf("shim of pid %d: %w", pid, err)
	}
	a := strings.TrimSpace(string(addr))
	if !strings.HasPrefix(a, "unix://") {
		return "", fmt.Errorf("shim of pid %d: address %q is not a unix socket", pid, a)
	}
	return a, nil
}

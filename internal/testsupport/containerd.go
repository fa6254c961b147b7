package testsupport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/ttrpc"
)

// containerdConfig keeps the daemon to what kiln's tests use: no CRI, no
// snapshotters beyond the defaults' essentials, nothing listening on TCP,
// and every directory under the test's own temp dir. Unknown names in
// disabled_plugins are ignored by containerd, so one list fits 1.6 and 1.7.
const containerdConfig = `version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`

// StartContainerd starts a private containerd daemon for the test and
// returns the address of its unix socket. Everything it writes lives under
// a short temp dir in /tmp (socket paths must stay under ~100 bytes). On
// cleanup every task and container of this daemon, in every namespace, is
// deleted (so no shim or runc process outlives the test), the daemon is
// stopped (SIGTERM, then SIGKILL) and the dir removed. The daemon's log is
// printed when the test failed.
func StartContainerd(t testing.TB) (address string) {
	t.Helper()
	NeedRoot(t)
	bin := NeedCommand(t, "containerd")
	NeedCommand(t, "runc")
	NeedCommand(t, "containerd-shim-runc-v2")

	dir, err := os.MkdirTemp("/tmp", "kc")
	if err != nil {
		t.Fatalf("containerd temp dir: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove containerd dir: %v", err)
		}
	})
	address = filepath.Join(dir, "c.sock")
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf(containerdConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"),
		address, address+".ttrpc", filepath.Join(dir, "opt"))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatalf("containerd config: %v", err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("containerd log: %v", err)
	}
	defer logf.Close()

	cmd := exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", address)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a ^C to the test does not reach it before
	// our cleanup has removed its containers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Registered before the readiness wait so a daemon that never answers
	// is still stopped; Cleanup runs last-registered first, so the log is
	// shown after the daemon is stopped and before the dir goes.
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log (%s):\n%s", logPath, Tail(string(b), 8000))
			}
		}
	})
	t.Cleanup(func() { stopContainerd(t, cmd, exited, address) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := ping(address); err == nil {
			return address
		} else if time.Now().After(deadline) {
			t.Fatalf("containerd at %s did not answer within 30s: %v", address, err)
		}
		select {
		case err := <-exited:
			exited <- err // stopContainerd reads it again
			t.Fatalf("containerd exited before answering: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ContainerdClient connects to the daemon at address and closes the
// client on cleanup.
func ContainerdClient(t testing.TB, address string) *containerd.Client {
	t.Helper()
	c, err := containerd.New(address)
	if err != nil {
		t.Fatalf("connect containerd %s: %v", address, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ping(address string) error {
	c, err := containerd.New(address, containerd.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = c.Version(ctx)
	return err
}

func stopContainerd(t testing.TB, cmd *exec.Cmd, exited chan error, address string) {
	t.Helper()
	select {
	case err := <-exited:
		exited <- err
	default:
		if err := deleteAllContainers(address); err != nil {
			t.Errorf("containerd cleanup: %v", err)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited: //nolint:errcheck // the daemon's exit status says nothing here
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited //nolint:errcheck // killed: its status is known
	}
}

// deleteAllContainers kills and deletes every task and container the daemon
// knows, so their shims exit; a shim left behind would keep the test's
// dirs and cgroups busy.
func deleteAllContainers(address string) error {
	c, err := containerd.New(address, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, err := c.Containers(nctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers in %s: %w", ns, err))
			continue
		}
		for _, ctr := range cs {
			if err := DeleteTask(nctx, ctr); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", ns, err))
			}
			if err := ctr.Delete(nctx); err != nil && !cerrdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete container %s/%s: %w", ns, ctr.ID(), err))
			}
		}
		if hostNamespace(ns) {
			removeNamespaceLeftovers(ns)
		}
	}
	return errors.Join(errs...)
}

// ShimAddressLabel is linux.LabelShimAddress: a container carrying it has
// its task on that shim alone, and containerd knows no task to delete.
const ShimAddressLabel = "kiln.shim-address"

// ShimBundleLabel is linux.LabelBundle, the bundle of such a task.
const ShimBundleLabel = "kiln.bundle"

// DeleteTask kills and deletes the task of ctr, whether containerd keeps it
// or, for a kiln sandbox on a shared shim, only that shim does (as when the
// host rebooted under a sandbox, or a test left it running). ctx is
// namespaced. No task is success.
func DeleteTask(ctx context.Context, ctr containerd.Container) error {
	if err := deleteShimTask(ctx, ctr); err != nil {
		return fmt.Errorf("delete task %s: %w", ctr.ID(), err)
	}
	task, err := ctr.Task(ctx, nil)
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load task %s: %w", ctr.ID(), err)
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("delete task %s: %w", ctr.ID(), err)
	}
	return nil
}

// deleteShimTask kills and deletes the task of a kiln container whose task
// only its shared shim knows, so the shim exits with the anchors.
func deleteShimTask(ctx context.Context, ctr containerd.Container) error {
	labels, err := ctr.Labels(ctx)
	if err != nil || labels[ShimAddressLabel] == "" {
		return nil
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(labels[ShimAddressLabel], "unix://"))
	if err != nil {
		return forceDeleteRunc(ctx, ctr.ID()) // the shim is gone; runc's container may be left
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	svc := taskv2.NewTaskClient(client)
	id := ctr.ID()
	if _, err := svc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true}); err == nil {
		_, _ = svc.Wait(ctx, &taskv2.WaitRequest{ID: id})
	}
	if _, err := svc.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil && !cerrdefs.IsNotFound(cerrdefs.FromGRPC(err)) {
		return err
	}
	if err := forceDeleteRunc(ctx, id); err != nil {
		return err
	}
	return os.RemoveAll(labels[ShimBundleLabel])
}

// forceDeleteRunc kills and deletes runc's container id of ctx's namespace
// if runc still has it (its shim died, or never knew it).
func forceDeleteRunc(ctx context.Context, id string) error {
	ns, _ := namespaces.Namespace(ctx)
	root := filepath.Join("/run/containerd/runc", ns)
	if _, err := os.Stat(filepath.Join(root, id)); err != nil {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "runc", "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
		return fmt.Errorf("runc delete --force %s: %w: %s", id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hostNamespace reports whether ns is one NewHost made: "kiln-" and the
// digits of its temp dir, used by no other test or containerd.
func hostNamespace(ns string) bool {
	digits, ok := strings.CutPrefix(ns, "kiln-")
	return ok && digits != "" && strings.Trim(digits, "0123456789") == ""
}

// removeNamespaceLeftovers removes the empty cgroup parents and runc state
// directory that containers of namespace ns leave behind: tests make a new
// namespace per host, and hundreds of stale cgroups slow every later
// container start on the machine. Only for namespaces no one else uses: the
// cgroup and runc state paths are shared by every containerd on the host,
// so removing a shared one could pull a parent cgroup from under a runc
// of another test.
func removeNamespaceLeftovers(ns string) {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	hierarchies = append(hierarchies, "/sys/fs/cgroup")
	for _, h := range hierarchies {
		root := filepath.Join(h, ns)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // children first
			_ = syscall.Rmdir(dirs[i])
		}
	}
	_ = os.Remove(filepath.Join("/run/containerd/runc", ns))
}

// Tail is the last n bytes of s or a little less, from a line start, for
// logs in failure messages.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := strings.IndexByte(s[len(s)-n:], '\n')
	return "...\n" + s[len(s)-n+i+1:]
}

// ShimAnchorLabel is linux.LabelShimAnchor (kept apart to spare the linux
// package's own tests an import cycle; a test there checks they agree).
const ShimAnchorLabel = "kiln.shim-anchor"

// Containers lists the containers in namespace ns, leaving out the shim
// anchors that kiln keeps on purpose between runs.
func Containers(t testing.TB, c *containerd.Client, ns string) []containerd.Container {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	all, err := c.Containers(ctx)
	if err != nil {
		t.Fatalf("list containers in %s: %v", ns, err)
	}
	var out []containerd.Container
	for _, ctr := range all {
		labels, err := ctr.Labels(ctx)
		if err != nil {
			continue // deleted meanwhile
		}
		if _, anchor := labels[ShimAnchorLabel]; !anchor {
			out = append(out, ctr)
		}
	}
	return out
}

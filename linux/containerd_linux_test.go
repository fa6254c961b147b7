package linux

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// testTimeout bounds each wait so a broken launcher fails the test instead
// of hanging it; it is a safety net, not something the tests measure.
const testTimeout = 60 * time.Second

const testPath = "PATH=/bin:/sbin:/usr/bin:/usr/sbin"

// syncBuffer is a console that tests can read while a container writes.
type syncBuffer = testsupport.Console

// newLauncher starts a private containerd and connects a launcher to it
// that shares shims, as the worker's and exec's launchers do.
func newLauncher(t testing.TB) (*Containerd, string) {
	t.Helper()
	shimDir := t.TempDir()
	return newLauncherWith(t, ContainerdConfig{ShareShimDir: shimDir, ShimGroups: 1, SandboxInit: testsupport.SandboxInit(t)})
}

// newLauncherWith is newLauncher with cfg (its Address and Logger filled in).
func newLauncherWith(t testing.TB, cfg ContainerdConfig) (*Containerd, string) {
	t.Helper()
	return newLauncherOn(t, testsupport.StartContainerd(t), cfg)
}

// newLauncherOn is newLauncherWith on the containerd at addr.
func newLauncherOn(t testing.TB, addr string, cfg ContainerdConfig) (*Containerd, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cfg.Address = addr
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	c, err := NewContainerd(ctx, cfg)
	if err != nil {
		t.Fatalf("NewContainerd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addr
}

// runID is unique across test processes: runc's state dir and the cgroup
// paths are shared by every containerd on the host.
func runID(t testing.TB) string {
	t.Helper()
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

// shSpec is a spec running script with busybox sh in a fresh rootfs copy.
func shSpec(t testing.TB, script string) (sandbox.Spec, *syncBuffer) {
	t.Helper()
	console := &syncBuffer{}
	return sandbox.Spec{
		RunID:   runID(t),
		Root:    testsupport.BusyboxRootfs(t),
		Args:    []string{"/bin/sh", "-c", script},
		Env:     []string{testPath, "HOME=/root"},
		Cwd:     "/work",
		Console: console,
	}, console
}

// deleteOnCleanup deletes sb when the test ends.
func deleteOnCleanup(t testing.TB, sb sandbox.Sandbox) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := sb.Delete(ctx); err != nil {
			t.Errorf("Delete: %v", err)
		}
	})
}

// start starts spec and deletes the sandbox on cleanup.
func start(t testing.TB, c *Containerd, spec sandbox.Spec) sandbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sb, err := c.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	deleteOnCleanup(t, sb)
	return sb
}

func wait(t testing.TB, sb sandbox.Sandbox) sandbox.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	exit, err := sb.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return exit
}

// run starts spec, waits for it and returns how it ended and its console.
func run(t testing.TB, c *Containerd, spec sandbox.Spec) sandbox.Exit {
	t.Helper()
	return wait(t, start(t, c, spec))
}

// waitFor polls the console until it contains want (the container is up to
// a known point); the deadline is only a safety net.
func waitFor(t testing.TB, console *syncBuffer, want string) {
	t.Helper()
	console.WaitFor(t, want, testTimeout)
}

func TestContainerdConsole(t *testing.T) {
	c, _ := newLauncher(t)
	const big = 5_000_000
	tests := []struct {
		name   string
		script string
		check  func(t *testing.T, out string)
	}{
		{
			name:   "stdout and stderr",
			script: `echo to-stdout; echo to-stderr >&2; pwd; echo "FOO=$FOO"; echo "PATH=$PATH"; grep NoNewPrivs /proc/self/status; echo "nofile=$(ulimit -n)"`,
			check: func(t *testing.T, out string) {
				for _, want := range []string{"to-stdout\n", "to-stderr\n", "/work\n", "FOO=bar\n", testPath + "\n", "NoNewPrivs:\t1\n", "nofile=1024\n"} {
					if !strings.Contains(out, want) {
						t.Errorf("console lacks %q:\n%s", want, out)
					}
				}
			},
		},
		{
			// Written just before exit: Wait must not return before the
			// last byte is copied.
			name:   "5 MB stdout plus 1 MB stderr",
			script: fmt.Sprintf(`dd if=/dev/zero bs=1000 count=%d 2>/dev/null | tr '\000' a; dd if=/dev/zero bs=1000 count=1000 2>/dev/null | tr '\000' b >&2; echo END`, big/1000),
			check: func(t *testing.T, out string) {
				if n := strings.Count(out, "a"); n != big {
					t.Errorf("got %d bytes of stdout, want %d", n, big)
				}
				if n := strings.Count(out, "b"); n != 1_000_000 {
					t.Errorf("got %d bytes of stderr, want %d", n, 1_000_000)
				}
				// stdout and stderr are copied separately, so only
				// presence is certain, not the order across streams.
				if strings.Count(out, "END\n") != 1 {
					t.Errorf("last stdout line missing")
				}
			},
		},
		{
			// A background child keeps writing after init's last
			// line; init waits for it, so all of it must arrive.
			name:   "output of a child",
			script: `(i=0; while [ $i -lt 1000 ]; do echo child-line-$i; i=$((i+1)); done) & wait`,
			check: func(t *testing.T, out string) {
				if n := strings.Count(out, "child-line-"); n != 1000 {
					t.Errorf("got %d child lines, want 1000", n)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, console := shSpec(t, tt.script)
			spec.Env = append(spec.Env, "FOO=bar")
			if exit := run(t, c, spec); exit.Code != 0 {
				t.Fatalf("exit %+v; console tail:\n%s", exit, console.String()[max(0, len(console.String())-500):])
			}
			tt.check(t, console.String())
		})
	}
}

func TestContainerdPidsLimit(t *testing.T) {
	c, _ := newLauncher(t)
	// The inner shell forks until the limit stops it; the outer one (PID 1)
	// then execs, which needs no new PID, so the container stays up until
	// it is killed.
	spec, console := shSpec(t, `sh -c 'i=0; while [ $i -lt 300 ]; do sleep 1000 & echo "started $!"; i=$((i+1)); done' 2>&1; echo "bomb done"; exec sleep 1000`)
	spec.Pids = 64
	sb := start(t, c, spec)
	waitFor(t, console, "bomb done")
	out := console.String()
	started := strings.Count(out, "started ")
	t.Logf("%d background processes started", started)
	if started == 0 || started >= 64 {
		t.Errorf("%d background processes started with pids limit 64, want 1..63", started)
	}
	if !strings.Contains(out, "fork") {
		t.Errorf("no fork failure reported:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := sb.Kill(ctx); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if got := wait(t, sb); got.Signal != "SIGKILL" {
		t.Errorf("exit = %+v, want SIGKILL", got)
	}
}

func TestContainerdMemoryLimit(t *testing.T) {
	c, _ := newLauncher(t)
	// The subshell holds 64 MiB in a variable; PID 1 survives to report.
	const script = `(x=$(dd if=/dev/zero bs=1048576 count=64 2>/dev/null | tr '\000' a); echo "allocated ${#x}"); echo "rc=$?"`
	tests := []struct {
		name   string
		limit  int64
		wantOK bool
	}{
		{"no limit", 0, true},
		{"512 MiB", 512 << 20, true},
		{"16 MiB", 16 << 20, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, console := shSpec(t, script)
			spec.MemoryBytes = tt.limit
			if exit := run(t, c, spec); exit.Code != 0 {
				t.Fatalf("exit %+v:\n%s", exit, console.String())
			}
			out := console.String()
			ok := strings.Contains(out, "allocated 67108864\n") && strings.Contains(out, "rc=0\n")
			if ok != tt.wantOK {
				t.Errorf("allocation succeeded = %v, want %v; console:\n%s", ok, tt.wantOK, out)
			}
			if !tt.wantOK && !strings.Contains(out, "rc=137\n") {
				t.Errorf("allocating shell not OOM-killed (want rc=137):\n%s", out)
			}
		})
	}
}

func TestContainerdLimitsConfigured(t *testing.T) {
	c, _ := newLauncher(t)
	// How fast a job runs under its CPU quota belongs in a benchmark; here
	// the cgroup files show that each limit reached the kernel.
	spec, _ := shSpec(t, `sleep 1000`)
	spec.CPUs = 1.5
	spec.MemoryBytes = 256 << 20
	spec.Pids = 100
	sb := start(t, c, spec)
	cg := func(controller, file string) string {
		return filepath.Join("/sys/fs/cgroup", controller, DefaultContainerdNamespace, sb.ID(), file)
	}
	testsupport.Need(t, dirExists(filepath.Dir(cg("cpu", "x"))), "cgroup v1 controllers under /sys/fs/cgroup")
	for _, tt := range []struct{ file, want string }{
		{cg("cpu", "cpu.cfs_quota_us"), "150000"},
		{cg("cpu", "cpu.cfs_period_us"), "100000"},
		{cg("memory", "memory.limit_in_bytes"), fmt.Sprint(256 << 20)},
		{cg("memory", "memory.memsw.limit_in_bytes"), fmt.Sprint(256 << 20)},
		{cg("pids", "pids.max"), "100"},
	} {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			b, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != tt.want {
				t.Errorf("%s = %s, want %s", tt.file, got, tt.want)
			}
		})
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// deleteTaskOnly leaves a kiln container without a task, as a crash
// between creating and starting one would.
func (s *containerdSandbox) deleteTaskOnly(ctx context.Context) error {
	return s.task.Delete(s.nsCtx(ctx), false)
}

func TestContainerdNetwork(t *testing.T) {
	c, _ := newLauncher(t)
	port := testsupport.HostListener(t, "127.0.0.1:0")
	hostResolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("isolated", func(t *testing.T) {
		// Loopback inside works; the host's loopback is another one.
		spec, console := shSpec(t, fmt.Sprintf(`exec 2>&1
echo "ifaces: $(ls /sys/class/net | tr '\n' ' ')"
# A client that connects before the listener has written anything may
# consume the one connection a listener takes, so keep listening until
# a client got the greeting.
(while :; do echo ping-inside | nc -l -p 5555; done) &
i=0; while [ $i -lt 100 ]; do
  if nc -w 1 127.0.0.1 5555 </dev/null >/tmp/got 2>/dev/null && [ -s /tmp/got ]; then echo "loopback: $(cat /tmp/got)"; break; fi
  sleep 0.1; i=$((i+1))
done
echo "host: $(nc -w 2 127.0.0.1 %d </dev/null 2>&1)"
`, port))
		if exit := run(t, c, spec); exit.Code != 0 {
			t.Fatalf("exit %+v:\n%s", exit, console.String())
		}
		out := console.String()
		if !strings.Contains(out, "ifaces: lo \n") {
			t.Errorf("want only lo in the container:\n%s", out)
		}
		if !strings.Contains(out, "loopback: ping-inside\n") {
			t.Errorf("loopback inside does not work:\n%s", out)
		}
		if strings.Contains(out, testsupport.HostGreeting) {
			t.Errorf("host's 127.0.0.1 reachable without network:\n%s", out)
		}
	})
	t.Run("host network", func(t *testing.T) {
		spec, console := shSpec(t, fmt.Sprintf(`exec 2>&1
echo "host: $(nc -w 2 127.0.0.1 %d </dev/null 2>&1)"
echo "resolv:"; cat /etc/resolv.conf; echo "end-resolv"
if (echo x >> /etc/resolv.conf) 2>/dev/null; then echo resolv-writable; fi
`, port))
		spec.Network = sandbox.NetworkHost
		if exit := run(t, c, spec); exit.Code != 0 {
			t.Fatalf("exit %+v:\n%s", exit, console.String())
		}
		out := console.String()
		if !strings.Contains(out, "host: "+testsupport.HostGreeting+"\n") {
			t.Errorf("host's 127.0.0.1 not reachable with network:\n%s", out)
		}
		if !strings.Contains(out, "resolv:\n"+string(hostResolv)+"end-resolv\n") {
			t.Errorf("/etc/resolv.conf is not the host's (%q):\n%s", hostResolv, out)
		}
		if strings.Contains(out, "resolv-writable") {
			t.Errorf("host's resolv.conf writable from the container")
		}
	})
}

func TestContainerdMounts(t *testing.T) {
	c, _ := newLauncher(t)
	ro, rw := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "tool"), []byte("tool-content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, console := shSpec(t, `
cat /host/tool
if (echo x > /host/new) 2>/dev/null; then echo ro-create-ok; fi
if (echo x >> /host/tool) 2>/dev/null; then echo ro-append-ok; fi
if rm /host/tool 2>/dev/null; then echo ro-rm-ok; fi
if mount -o remount,rw /host 2>/dev/null; then echo ro-remount-ok; fi
echo from-container > /out/result
echo done
`)
	spec.Mounts = []sandbox.Mount{
		{Source: ro, Target: "/host", ReadOnly: true},
		{Source: rw, Target: "/out"},
	}
	if exit := run(t, c, spec); exit.Code != 0 {
		t.Fatalf("exit %+v:\n%s", exit, console.String())
	}
	out := console.String()
	if !strings.Contains(out, "tool-content\n") || !strings.Contains(out, "done\n") {
		t.Fatalf("script did not run through:\n%s", out)
	}
	for _, bad := range []string{"ro-create-ok", "ro-append-ok", "ro-rm-ok", "ro-remount-ok"} {
		if strings.Contains(out, bad) {
			t.Errorf("read-only mount: %s", bad)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ro, "tool")); err != nil || string(b) != "tool-content\n" {
		t.Errorf("read-only source changed: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "result")); err != nil || string(b) != "from-container\n" {
		t.Errorf("rw mount: result = %q, %v", b, err)
	}
}

func TestContainerdHostname(t *testing.T) {
	c, _ := newLauncher(t)
	for _, tt := range []struct{ name, hostname string }{
		{"default is run ID", ""},
		{"explicit", "builder-1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec, console := shSpec(t, `hostname`)
			spec.Hostname = tt.hostname
			want := tt.hostname
			if want == "" {
				want = spec.RunID
			}
			if exit := run(t, c, spec); exit.Code != 0 {
				t.Fatalf("exit %+v:\n%s", exit, console.String())
			}
			if got := console.String(); got != want+"\n" {
				t.Errorf("hostname = %q, want %q", got, want)
			}
		})
	}
}

// startForeign starts a sleeping container that is not kiln's, in the same
// namespace, through the raw client.
func startForeign(t *testing.T, addr string) (containerd.Container, context.Context) {
	t.Helper()
	client := testsupport.ContainerdClient(t, addr)
	ctx := namespaces.WithNamespace(context.Background(), DefaultContainerdNamespace)
	id := "other-" + runID(t)
	ctr, err := client.NewContainer(ctx, id, containerd.WithNewSpec(
		oci.WithRootFSPath(testsupport.BusyboxRootfs(t)),
		oci.WithProcessArgs("/bin/sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			t.Errorf("delete foreign task: %v", err)
		}
		if err := ctr.Delete(ctx); err != nil {
			t.Errorf("delete foreign container: %v", err)
		}
	})
	return ctr, ctx
}

func TestContainerdReap(t *testing.T) {
	c, addr := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	foreign, fctx := startForeign(t, addr)

	sbs := map[string]sandbox.Sandbox{}
	var runs []string
	for range 3 {
		spec, _ := shSpec(t, `sleep 1000`)
		sbs[spec.RunID] = start(t, c, spec)
		runs = append(runs, spec.RunID)
	}
	// One kiln container without a task, as a crash between create and
	// start would leave it.
	spec, _ := shSpec(t, `exit 0`)
	taskless := spec.RunID
	sb := start(t, c, spec)
	sbs[taskless] = sb
	wait(t, sb)
	if err := sb.(*containerdSandbox).deleteTaskOnly(ctx); err != nil {
		t.Fatal(err)
	}
	runs = append(runs, taskless)

	got, err := c.Running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Sort(got); !slices.Equal(got, slices.Sorted(slices.Values(runs))) {
		t.Fatalf("Running = %v, want %v", got, runs)
	}

	kept := runs[0]
	var asked []string
	if err := c.Reap(ctx, func(run string) bool {
		asked = append(asked, run)
		return run == kept
	}); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	if slices.Sort(asked); !slices.Equal(asked, slices.Sorted(slices.Values(runs))) {
		t.Errorf("keep asked about %v, want exactly kiln's runs %v", asked, runs)
	}
	got, err = c.Running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{kept}) {
		t.Errorf("after Reap, Running = %v, want [%s]", got, kept)
	}
	for _, run := range runs[1:3] {
		if exit := wait(t, sbs[run]); exit.Signal != "SIGKILL" {
			t.Errorf("reaped run %s exit = %+v, want SIGKILL", run, exit)
		}
	}
	// The kept one and the foreign one still run.
	waitCtx, waitCancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer waitCancel()
	if _, err := sbs[kept].Wait(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("kept run's Wait = %v, want it still running", err)
	}
	task, err := foreign.Task(fctx, nil)
	if err != nil {
		t.Fatalf("foreign container's task: %v", err)
	}
	if st, err := task.Status(fctx); err != nil || st.Status != containerd.Running {
		t.Errorf("foreign container status = %v, %v; want running", st.Status, err)
	}
	// Reap and Delete of reaped sandboxes agree: gone is gone.
	for _, run := range runs[1:] {
		if err := sbs[run].Delete(ctx); err != nil {
			t.Errorf("Delete after Reap: %v", err)
		}
	}
}

func TestContainerdDelete(t *testing.T) {
	c, _ := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, tt := range []struct {
		name   string
		script string
	}{
		{"running", `sleep 1000`},
		{"exited", `exit 0`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec, _ := shSpec(t, tt.script)
			sb, err := c.Start(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			if tt.script == "exit 0" {
				wait(t, sb)
			}
			for i := range 3 {
				if err := sb.Delete(ctx); err != nil {
					t.Fatalf("Delete #%d: %v", i+1, err)
				}
			}
			// A deleted running sandbox was killed, and Wait says so.
			if exit := wait(t, sb); tt.script != "exit 0" && exit.Signal != "SIGKILL" {
				t.Errorf("exit after Delete = %+v, want SIGKILL", exit)
			}
			runs, err := c.Running(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(runs, spec.RunID) {
				t.Errorf("run %s still listed after Delete", spec.RunID)
			}
		})
	}
}

func TestContainerdStartFails(t *testing.T) {
	c, addr := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	tests := []struct {
		name    string
		edit    func(*sandbox.Spec)
		invalid bool // rejected before containerd is asked
	}{
		{"no command", func(s *sandbox.Spec) { s.Args = nil }, true},
		{"relative root", func(s *sandbox.Spec) { s.Root = "rootfs" }, true},
		{"bad run ID", func(s *sandbox.Spec) { s.RunID = "a/b" }, true},
		{"relative mount", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: "x", Target: "/x"}} }, true},
		{"missing mount source", func(s *sandbox.Spec) {
			s.Mounts = []sandbox.Mount{{Source: "/no/such/dir", Target: "/x"}}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, _ := shSpec(t, `true`)
			tt.edit(&spec)
			sb, err := c.Start(ctx, spec)
			if err == nil {
				sb.Delete(ctx)
				t.Fatal("Start succeeded")
			}
			if got := errors.Is(err, errdefs.ErrInvalid); got != tt.invalid {
				t.Errorf("Start error %v: ErrInvalid = %v, want %v", err, got, tt.invalid)
			}
		})
	}
	// Nothing is left but the shim anchors, kiln's or otherwise.
	client := testsupport.ContainerdClient(t, addr)
	if ctrs := testsupport.Containers(t, client, DefaultContainerdNamespace); len(ctrs) != 0 {
		var ids []string
		for _, ctr := range ctrs {
			ids = append(ids, ctr.ID())
		}
		t.Errorf("failed Starts left containers: %v", ids)
	}
}

// A program missing from the image is the job's failure, as in a shell
// (and Docker): exit 127, and the console says why. kiln-sandbox-init, not
// runc, execs it (docs/security.md).
func TestContainerdMissingProgram(t *testing.T) {
	c, _ := newLauncher(t)
	spec, console := shSpec(t, "true")
	spec.Args = []string{"/no/such/binary", "arg"}
	sb := start(t, c, spec)
	if exit := wait(t, sb); exit.Code != 127 {
		t.Errorf("exit %+v, want code 127", exit)
	}
	if !strings.Contains(console.String(), "/no/such/binary") {
		t.Errorf("console %q does not name the program", console.String())
	}
}

func TestContainerdReapDuringStart(t *testing.T) {
	c, _ := newLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	stale, _ := shSpec(t, `sleep 1000`)
	staleSB := start(t, c, stale)

	const n = 6
	specs := make([]sandbox.Spec, n)
	held := map[string]bool{}
	for i := range specs {
		specs[i], _ = shSpec(t, `sleep 1000`)
		held[specs[i].RunID] = true
	}
	keep := func(run string) bool { return held[run] }

	// Reap keeps running while the held runs start; none of them may be
	// caught half-created, and the stale one must go.
	reapDone := make(chan error, 1)
	stopReap := make(chan struct{})
	go func() {
		var errs []error
		for {
			select {
			case <-stopReap:
				reapDone <- errors.Join(errs...)
				return
			default:
			}
			if err := c.Reap(ctx, keep); err != nil {
				errs = append(errs, err)
			}
		}
	}()
	var wg sync.WaitGroup
	sbs := make([]sandbox.Sandbox, n)
	errs := make([]error, n)
	for i := range specs {
		wg.Go(func() { sbs[i], errs[i] = c.Start(ctx, specs[i]) })
	}
	wg.Wait()
	close(stopReap)
	if err := <-reapDone; err != nil {
		t.Errorf("Reap: %v", err)
	}
	for i, sb := range sbs {
		if errs[i] != nil {
			t.Errorf("Start %d: %v", i, errs[i])
			continue
		}
		t.Cleanup(func() { sb.Delete(context.Background()) })
	}
	if exit := wait(t, staleSB); exit.Signal != "SIGKILL" {
		t.Errorf("stale run exit = %+v, want reaped (SIGKILL)", exit)
	}
	got, err := c.Running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for run := range held {
		want = append(want, run)
	}
	if slices.Sort(got); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("Running = %v, want the held runs %v", got, want)
	}
	for i, sb := range sbs {
		if sb == nil {
			continue
		}
		waitCtx, waitCancel := context.WithTimeout(ctx, 100*time.Millisecond)
		if _, err := sb.Wait(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("held run %d ended: %v", i, err)
		}
		waitCancel()
	}
}

func TestContainerdForeignArch(t *testing.T) {
	c, _ := newLauncher(t)
	handler := "/proc/sys/fs/binfmt_misc/qemu-aarch64"
	b, _ := os.ReadFile(handler)
	testsupport.Need(t, binfmtFixed(string(b)), handler+" enabled with the F flag (qemu-user-static)")
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := images.WriteBusyboxRootfs(root, testsupport.ForeignBusybox(t, "arm64")); err != nil {
		t.Fatal(err)
	}
	// The emulator is not in the rootfs: the kernel opened it when the
	// handler was registered (F flag), so the launcher has nothing to add.
	spec, console := shSpec(t, `uname -m; echo ok > /work/written`)
	spec.Root, spec.Arch = root, "arm64"
	if exit := run(t, c, spec); exit.Code != 0 {
		t.Fatalf("exit %+v:\n%s", exit, console.String())
	}
	if got := console.String(); got != "aarch64\n" {
		t.Errorf("uname -m = %q, want aarch64", got)
	}
	if _, err := os.Stat(filepath.Join(root, "work", "written")); err != nil {
		t.Errorf("rootfs not writable: %v", err)
	}
}

// binfmtFixed reports whether a binfmt_misc handler file says enabled and
// carries the F (fix binary) flag.
func binfmtFixed(handler string) bool {
	if !strings.HasPrefix(handler, "enabled\n") {
		return false
	}
	for line := range strings.Lines(handler) {
		if flags, ok := strings.CutPrefix(line, "flags: "); ok {
			return strings.Contains(flags, "F")
		}
	}
	return false
}

func TestExitFromCode(t *testing.T) {
	for _, tt := range []struct {
		code uint32
		want sandbox.Exit
	}{
		{0, sandbox.Exit{}},
		{1, sandbox.Exit{Code: 1}},
		{128, sandbox.Exit{Code: 128}},
		{130, sandbox.Exit{Code: 130, Signal: "SIGINT"}},
		{137, sandbox.Exit{Code: 137, Signal: "SIGKILL"}},
		{143, sandbox.Exit{Code: 143, Signal: "SIGTERM"}},
		{255, sandbox.Exit{Code: 255}},
	} {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			if got := exitFromCode(tt.code); got != tt.want {
				t.Errorf("exitFromCode(%d) = %+v, want %+v", tt.code, got, tt.want)
			}
		})
	}
}

func TestNewContainerdUnreachable(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "kn") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// A socket file nobody listens on, as a crashed daemon leaves it.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	for _, tt := range []struct{ name, addr string }{
		{"no socket", filepath.Join(dir, "none.sock")},
		{"no socket, unix:// form", "unix://" + filepath.Join(dir, "none.sock")},
		{"nobody listening", stale},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := NewContainerd(ctx, ContainerdConfig{Address: tt.addr})
			if err == nil {
				c.Close()
				t.Fatal("NewContainerd succeeded without a daemon")
			}
			for _, want := range []string{strings.TrimPrefix(tt.addr, "unix://"), "start containerd"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestContainerdVersion(t *testing.T) {
	c, _ := newLauncher(t)
	v, err := c.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v == "" {
		t.Error("empty version")
	}
}

func BenchmarkContainerdRun(b *testing.B) {
	c, _ := newLauncher(b)
	root := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		sb, err := c.Start(ctx, sandbox.Spec{
			RunID: fmt.Sprintf("bench-%s-%d", runID(b), i),
			Root:  root,
			Args:  []string{"/bin/true"},
			Env:   []string{testPath},
		})
		if err != nil {
			b.Fatal(err)
		}
		if exit, err := sb.Wait(ctx); err != nil || exit.Code != 0 {
			b.Fatalf("Wait: %+v, %v", exit, err)
		}
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// Kill after the init's exit does no work of its own: it relies on the
// kernel having killed the rest of the PID namespace with its init. A
// process the job left behind must not go on writing into the root.
func TestContainerdNothingOutlivesInit(t *testing.T) {
	c, _ := newLauncher(t)
	// Written aside and renamed: killed between truncate and write, a
	// plain redirect would leave an empty file.
	spec, console := shSpec(t, `(trap '' TERM HUP; while :; do date +%s%N > /tmp/alive.new && mv /tmp/alive.new /tmp/alive; sleep 0.05; done) &
sleep 0.3; echo left-behind`)
	sb := start(t, c, spec)
	if exit := wait(t, sb); exit.Code != 0 {
		t.Fatalf("exit %+v: %s", exit, console.String())
	}
	if err := sb.Kill(context.Background()); err != nil {
		t.Fatal(err)
	}
	alive := filepath.Join(spec.Root, "tmp", "alive")
	first, err := os.ReadFile(alive)
	if err != nil || len(first) == 0 {
		t.Fatalf("the background process never wrote: %q %v (console %q)", first, err, console.String())
	}
	time.Sleep(500 * time.Millisecond)
	if again, _ := os.ReadFile(alive); !bytes.Equal(again, first) {
		t.Fatalf("a process of the sandbox still writes after its init exited: %q then %q", first, again)
	}
}

package linux

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/sandbox"
)

// startWarm prepares spec as a warm task, then starts it as a run with
// the adoption's limits, hostname and console; the sandbox is deleted on
// cleanup.
func startWarm(t testing.TB, c *Containerd, spec sandbox.Spec, a sandbox.Adoption) sandbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	console := spec.Console
	spec.Console = nil
	p, err := c.Prepare(ctx, spec)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if a.Console == nil {
		a.Console = console
	}
	sb, err := p.Start(ctx, a)
	if err != nil {
		_ = p.Delete(ctx)
		t.Fatalf("Start: %v", err)
	}
	deleteOnCleanup(t, sb)
	return sb
}

// cgroupValue reads file of controller in the cgroup of sb (cgroup v1, or
// v2's unified tree when the v1 file is not there).
func cgroupValue(t *testing.T, c *Containerd, sb sandbox.Sandbox, controller, file string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(c.nsCtx(context.Background()), testTimeout)
	defer cancel()
	spec, err := sb.(*containerdSandbox).ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join("/sys/fs/cgroup", controller, spec.Linux.CgroupsPath, file), filepath.Join("/sys/fs/cgroup", spec.Linux.CgroupsPath, file)} {
		if b, err := os.ReadFile(p); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	t.Fatalf("no %s/%s for %s", controller, file, spec.Linux.CgroupsPath)
	return ""
}

// A warm task started for a run has the run's limits (task.Update when
// they differ from those it was made with) and hostname, set before its
// init runs.
func TestWarmTaskAdoption(t *testing.T) {
	c, _ := newLauncher(t)
	made := sandbox.Resources{MemoryBytes: 512 << 20, Pids: 300, CPUs: 2}
	for _, tt := range []struct {
		name  string
		run   sandbox.Resources
		quota string
	}{
		{"same limits", made, "200000"},
		{"other limits", sandbox.Resources{MemoryBytes: 256 << 20, Pids: 100, CPUs: 0.5}, "50000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec, console := shSpec(t, `echo "host=$(hostname)"; exec sleep 60`)
			spec.Resources = made
			sb := startWarm(t, c, spec, sandbox.Adoption{Hostname: "the-run", Resources: tt.run})
			waitFor(t, console, "host=")
			if !strings.Contains(console.String(), "host=the-run\n") {
				t.Errorf("console %q, want hostname the-run", console)
			}
			for _, f := range []struct{ controller, file, want string }{
				{"memory", "memory.limit_in_bytes", strconv.FormatInt(tt.run.MemoryBytes, 10)},
				{"pids", "pids.max", strconv.FormatInt(tt.run.Pids, 10)},
				{"cpu", "cpu.cfs_quota_us", tt.quota},
			} {
				if got := cgroupValue(t, c, sb, f.controller, f.file); got != f.want {
					t.Errorf("%s = %s, want %s", f.file, got, f.want)
				}
			}
		})
	}
}

// warmContainers lists the containers of c's warm tasks.
func warmContainers(t *testing.T, c *Containerd) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ids, err := c.containerIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for id := range ids {
		if strings.Contains(id, "-warm-") {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// commitImage commits the busybox rootfs with /version as img@version.
func commitImage(t *testing.T, be sandbox.Backend, rootfs, version string) {
	t.Helper()
	ctx := context.Background()
	b, err := be.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", rootfs+"/.", b.Root).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(b.Root, "version"), []byte(version), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Commit(ctx, b, version); err != nil {
		t.Fatal(err)
	}
}

// warmScript tells whether it runs on a warm task and what it was given.
const warmScript = `test -e /.kiln/entry && echo on=warm-task
echo "uid=$(id -u):$(id -g) cwd=$(pwd) umask=$(umask) foo=$FOO host=$(hostname) in=$(cat /in/x) version=$(cat /version)"
echo o >/out/o
exit 4`

// A run of the Runner takes a warm task of its snapshot: its own user,
// working directory, umask, env, hostname, /in, exit code and artifacts,
// whether the task runs as root or as the host's run user; a new version
// of the image is never served by a warm task of the old one, which the
// next fill drops.
func TestWarmTaskRuns(t *testing.T) {
	c, _ := newLauncher(t)
	rootfs := testsupport.BusyboxRootfs(t)
	input := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(input, []byte("input"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("input"))
	for _, tt := range []struct {
		name, user, cwd, want string
	}{
		{"root", "", "/work/a/b", "uid=0:0 cwd=/work/a/b"},
		{"run user", "1000:1001", "", "uid=1000:1001 cwd=/work"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			be, err := treestore.NewOverlay(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			commitImage(t, be, rootfs, "v1")
			r := &sandbox.Runner{Storage: be, Launcher: c, RunsDir: t.TempDir(), User: tt.user, WarmSlots: 1}
			t.Cleanup(func() {
				if err := r.Close(context.Background()); err != nil {
					t.Errorf("Close: %v", err)
				}
				if left := warmContainers(t, c); len(left) > 0 {
					t.Errorf("warm tasks left after Close: %v", left)
				}
			})
			req := func(id, snapshot string) sandbox.Request {
				return sandbox.Request{RunID: id, Job: "j", Snapshot: snapshot, Script: warmScript, Cwd: tt.cwd, Umask: "027",
					Env: map[string]string{"FOO": "it's $x"}, Inputs: []sandbox.InputFile{{Path: "x", Source: input, SHA256: hex.EncodeToString(sum[:])}},
					OutDir: filepath.Join(t.TempDir(), "out")}
			}
			if err := r.Warm(ctx, req("", "img@v1")); err != nil {
				t.Fatalf("Warm: %v", err)
			}
			idle := warmContainers(t, c)
			if len(idle) != 1 {
				t.Fatalf("warm tasks after Warm: %v, want 1", idle)
			}
			var console syncBuffer
			rq := req("r1", "img@v1")
			rq.Console = &console
			res, err := r.Run(ctx, rq)
			if err != nil || res.ExitCode() != 4 {
				t.Fatalf("run: %v, exit %d\n%s", err, res.ExitCode(), &console)
			}
			want := "on=warm-task\n" + tt.want + " umask=0027 foo=it's $x host=r1 in=input version=v1\n"
			if !strings.HasPrefix(console.String(), want) {
				t.Errorf("console:\n%s\nwant it to start with\n%s", &console, want)
			}
			if len(res.Artifacts) != 1 || res.Artifacts[0].Path != "o" {
				t.Errorf("artifacts %+v, want o", res.Artifacts)
			}
			if got := warmContainers(t, c); slices.Contains(got, idle[0]) {
				t.Errorf("warm task %s still there after the run that took it: %v", idle[0], got)
			}

			// The pool is refilled, off the run's path; wait for it.
			if err := r.Warm(ctx, req("", "img@v1")); err != nil {
				t.Fatalf("Warm: %v", err)
			}
			v1 := warmContainers(t, c)
			commitImage(t, be, rootfs, "v2")
			console = syncBuffer{}
			rq = req("r2", "img@v2")
			rq.Console = &console
			if res, err = r.Run(ctx, rq); err != nil || res.ExitCode() != 4 {
				t.Fatalf("run of v2: %v, exit %d\n%s", err, res.ExitCode(), &console)
			}
			if s := console.String(); strings.Contains(s, "on=warm-task") || !strings.Contains(s, "version=v2") {
				t.Errorf("run of v2, console:\n%s\nwant v2, not on a warm task of v1", s)
			}
			if err := r.Warm(ctx, req("", "img@v2")); err != nil {
				t.Fatalf("Warm v2: %v", err)
			}
			if got := warmContainers(t, c); len(got) != 1 || slices.Contains(v1, got[0]) {
				t.Errorf("warm tasks after Warm of v2: %v; want one, none of v1's %v", got, v1)
			}
		})
	}
}

// firstInstruction is the wall time the job's first command (busybox
// adjtimex, which prints the kernel's time) ran at, from its console.
func firstInstruction(b testing.TB, console string) time.Time {
	b.Helper()
	var sec, usec int64
	for _, l := range strings.Split(console, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch strings.TrimSpace(k) {
		case "time.tv_sec":
			sec = n
		case "time.tv_usec":
			usec = n
		default:
			continue
		}
		if err != nil {
			b.Fatalf("adjtimex %q: %v", l, err)
		}
	}
	if sec == 0 {
		b.Fatalf("no adjtimex time in console:\n%s", console)
	}
	return time.Unix(sec, usec*1000)
}

// BenchmarkWarmTaskStart is a probe of issue 18's first goal: the time
// from Runner.Run (the worker calls it once a lease is validated, its
// image resolved and inputs fetched) to the job's first instruction,
// on a warm task and cold (clone, create and start on the run's path),
// interleaved. The pool is refilled between runs, untimed.
//
//	go test -run '^$' -bench WarmTaskStart -benchtime 20x ./linux/
func BenchmarkWarmTaskStart(b *testing.B) {
	testsupport.NeedRoot(b)
	c, _ := newLauncher(b)
	be, err := treestore.NewOverlay(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	testsupport.CommitImage(b, be, "img", "v1", testsupport.BusyboxRootfs(b))
	var startMu sync.Mutex
	var starts []time.Duration
	warm := &sandbox.Runner{Storage: be, Launcher: c, RunsDir: b.TempDir(), WarmSlots: 1, Observe: func(p sandbox.Phase, d time.Duration) {
		if p == sandbox.PhaseStart {
			startMu.Lock()
			starts = append(starts, d)
			startMu.Unlock()
		}
	}}
	cold := &sandbox.Runner{Storage: be, Launcher: c, RunsDir: b.TempDir()}
	defer warm.Close(ctx)
	lat := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, m := range []struct {
			name string
			r    *sandbox.Runner
		}{{"cold", cold}, {"warm", warm}} {
			req := sandbox.Request{RunID: fmt.Sprintf("%s-%d", m.name, i), Job: "probe", Snapshot: "img@v1", Script: "adjtimex"}
			if m.r == warm {
				b.StopTimer()
				if err := warm.Warm(ctx, req); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			var console syncBuffer
			req.Console = &console
			t0 := time.Now()
			res, err := m.r.Run(ctx, req)
			if err != nil || res.ExitCode() != 0 {
				b.Fatalf("%s run: %v %+v\n%s", m.name, err, res, &console)
			}
			lat[m.name] = append(lat[m.name], firstInstruction(b, console.String()).Sub(t0))
			m.r.Forget(req.RunID)
		}
	}
	b.StopTimer()
	lat["warm-start-phase"] = starts
	for name, ds := range lat {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, name+"-p50-ms")
		b.ReportMetric(float64(ds[len(ds)*9/10].Microseconds())/1000, name+"-p90-ms")
	}
}

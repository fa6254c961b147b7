package linux_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/sandbox"
)

// BenchmarkTrivialRun measures one whole kiln run of `true` (clone, start,
// wait, collect, delete, destroy) on overlay and on btrfs, interleaved with
// the raw baseline `ctr run --rm --rootfs` on an overlay of the same rootfs,
// and reports both and their ratio (goal: kiln/ctr <= 0.75), and the CPU
// each costs per run: the whole machine's (/proc/stat, meaningful only on
// an otherwise quiet machine) and that of the benchmark's process tree
// (its cpuacct cgroup: this process, containerd, the shims, runc's calls,
// ctr; not the containers' own processes, which runc puts in their
// cgroups).
//
// "overlay-gvisor-sync" is "overlay-sync" with isolation = "gvisor" (runsc),
// beside the same raw runc baseline.
//
// Two modes: "sync" times everything inside Runner.Run; "warm" is how the
// worker runs: the clone comes from the warm pool and the sandbox delete
// and clone destroy happen after the result (AsyncTeardown). In "warm" the
// background work (teardown, preparing the next warm clone) is finished,
// untimed, before the next baseline run so that it never overlaps it.
//
//	go test -run '^$' -bench TrivialRun -benchtime 40x ./linux/
func BenchmarkTrivialRun(b *testing.B) {
	testsupport.NeedRoot(b)
	ctrBin := testsupport.NeedCommand(b, "ctr")
	// Before containerd starts, so that it and its shims are counted.
	treeCPU := testsupport.TreeCPU(b)
	addr := testsupport.StartContainerd(b)
	rootfs := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	// Shared shims, as the worker and exec run.
	launcher, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, Namespace: "kiln-bench", ShareShimDir: b.TempDir(), ShimGroups: 2, SandboxInit: testsupport.SandboxInit(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer launcher.Close()

	// The baseline's rootfs: an overlay of the same tree, mounted once.
	merged := testsupport.OverlayOf(b, rootfs)

	backends := map[string]func() sandbox.Backend{
		"overlay": func() sandbox.Backend {
			o, err := treestore.NewOverlay(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return o
		},
		"btrfs": func() sandbox.Backend {
			o, err := treestore.NewBtrfs(testsupport.Btrfs(b))
			if err != nil {
				b.Fatal(err)
			}
			return o
		},
	}
	for _, bench := range []struct{ name, backend string }{
		{"overlay-sync", "overlay"}, {"overlay-warm", "overlay"},
		{"btrfs-sync", "btrfs"}, {"btrfs-warm", "btrfs"},
		// With the default disk limit of [limits], as the worker and
		// exec run now.
		{"overlay-sync-disk", "overlay"}, {"overlay-warm-disk", "overlay"},
		{"btrfs-sync-disk", "btrfs"}, {"btrfs-warm-disk", "btrfs"},
		{"overlay-gvisor-sync", "overlay"},
	} {
		name := bench.name
		warm := strings.Contains(name, "-warm")
		isolation := ""
		if strings.Contains(name, "gvisor") {
			isolation = api.IsolationGVisor
		}
		var disk int64
		if strings.HasSuffix(name, "-disk") {
			disk = 10 << 30
		}
		b.Run(name, func(b *testing.B) {
			if isolation == api.IsolationGVisor {
				testsupport.NeedCommand(b, "runsc")
			}
			be := backends[bench.backend]()
			testsupport.CommitImage(b, be, "bench", "v1", rootfs)
			r := &sandbox.Runner{Storage: be, Launcher: launcher, RunsDir: b.TempDir(), AsyncTeardown: warm, WarmDisk: disk}
			defer r.Close(ctx)
			out := b.TempDir()
			if warm {
				r.Prewarm(ctx, "bench@v1")
			}
			var kiln, ctr, kilnCPU, ctrCPU, kilnTree, ctrTree time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				m0, c0 := testsupport.MachineCPU(b), treeCPU()
				t0 := time.Now()
				cmd := exec.Command(ctrBin, "--address", addr, "-n", "kiln-bench", "run", "--rm", "--rootfs", merged, fmt.Sprintf("ctr-%s-%d", name, i), "/bin/true")
				if o, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("ctr run: %v: %s", err, o)
				}
				t1 := time.Now()
				m1, c1 := testsupport.MachineCPU(b), treeCPU()
				id := fmt.Sprintf("b-%s-%d", name, i)
				res, err := r.Run(ctx, sandbox.Request{RunID: id, Job: "bench", Snapshot: "bench@v1", Script: "true", OutDir: filepath.Join(out, id),
					Resources: sandbox.Resources{DiskBytes: disk}, Isolation: isolation})
				if err != nil || res.ExitCode() != 0 {
					b.Fatalf("kiln run: %v %+v", err, res)
				}
				kiln += time.Since(t1)
				ctr += t1.Sub(t0)
				r.Forget(id)
				if warm {
					r.Prewarm(ctx, "bench@v1")
				}
				// With the background teardown and the next warm clone.
				m2, c2 := testsupport.MachineCPU(b), treeCPU()
				ctrCPU, kilnCPU = ctrCPU+m1-m0, kilnCPU+m2-m1
				ctrTree, kilnTree = ctrTree+c1-c0, kilnTree+c2-c1
			}
			b.StopTimer()
			n := float64(b.N)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
			b.ReportMetric(float64(ctr.Milliseconds())/n, "ctr-ms/run")
			b.ReportMetric(float64(kiln.Milliseconds())/n, "kiln-ms/run")
			b.ReportMetric(float64(kiln)/float64(ctr), "kiln/ctr")
			b.ReportMetric(ms(ctrCPU), "ctr-cpu-ms/run")
			b.ReportMetric(ms(kilnCPU), "kiln-cpu-ms/run")
			b.ReportMetric(ms(ctrTree), "ctr-tree-cpu-ms/run")
			b.ReportMetric(ms(kilnTree), "kiln-tree-cpu-ms/run")
		})
	}
}

// BenchmarkDiskLimitClone measures what a disk limit costs per run at the
// storage: making and destroying a clone without a limit and with the
// default 10GiB one, interleaved, on overlay (sparse ext4 loop file) and
// btrfs (qgroup). It reports both and the difference.
//
//	go test -run '^$' -bench DiskLimitClone -benchtime 30x ./linux/
func BenchmarkDiskLimitClone(b *testing.B) {
	testsupport.NeedRoot(b)
	testsupport.NeedCommand(b, "mkfs.ext4")
	rootfs := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	backends := []struct {
		name string
		open func() sandbox.Backend
	}{
		{"overlay", func() sandbox.Backend {
			o, err := treestore.NewOverlay(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return o
		}},
		{"btrfs", func() sandbox.Backend {
			o, err := treestore.NewBtrfs(testsupport.Btrfs(b))
			if err != nil {
				b.Fatal(err)
			}
			return o
		}},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			st := be.open()
			testsupport.CommitImage(b, st, "bench", "v1", rootfs)
			dl := st.(sandbox.DiskLimiter)
			var plain, limited time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := st.Clone(ctx, "bench@v1", fmt.Sprintf("p%d", i)); err != nil {
					b.Fatal(err)
				}
				if err := st.Destroy(ctx, fmt.Sprintf("p%d", i)); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := dl.CloneLimited(ctx, "bench@v1", fmt.Sprintf("l%d", i), 10<<30); err != nil {
					b.Fatal(err)
				}
				if err := st.Destroy(ctx, fmt.Sprintf("l%d", i)); err != nil {
					b.Fatal(err)
				}
				plain += t1.Sub(t0)
				limited += time.Since(t1)
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(plain.Microseconds())/n/1000, "plain-ms/clone")
			b.ReportMetric(float64(limited.Microseconds())/n/1000, "limited-ms/clone")
			b.ReportMetric(float64((limited-plain).Microseconds())/n/1000, "extra-ms/clone")
		})
	}
}

// BenchmarkBridgeRun measures what network = "bridge" adds to a trivial
// sandbox (start `true` and wait for it, then delete it, through the
// launcher alone; the worker deletes after the result is in): runs with
// network none and bridge are interleaved, and both are reported;
// "pool" takes each bridge network from a pool of one made ahead (refilled,
// untimed, between iterations), as the worker does; "gvisor-pool" is
// "pool" with isolation = "gvisor" for both modes.
//
//	go test -run '^$' -bench BridgeRun -benchtime 20x ./linux/
func BenchmarkBridgeRun(b *testing.B) {
	addr := testsupport.StartContainerd(b)
	rootfs := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		pool      int
		isolation string
	}{{"no-pool", 0, ""}, {"pool", 1, ""}, {"gvisor-pool", 1, api.IsolationGVisor}} {
		name, pool := tc.name, tc.pool
		b.Run(name, func(b *testing.B) {
			if tc.isolation == api.IsolationGVisor {
				testsupport.NeedCommand(b, "runsc")
			}
			n := testsupport.Network(b, func(c *netcni.Config) { c.Pool = pool })
			launcher, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, Namespace: "kiln-bench", ShareShimDir: b.TempDir(), ShimGroups: 2, SandboxInit: testsupport.SandboxInit(b), Network: n})
			if err != nil {
				b.Fatal(err)
			}
			defer launcher.Close()
			once := func(id string, mode sandbox.NetworkMode) (run, del time.Duration) {
				b.StopTimer()
				root := testsupport.OverlayOf(b, rootfs)
				if err := n.WaitPool(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t0 := time.Now()
				sb, err := launcher.Start(ctx, sandbox.Spec{RunID: id, Root: root,
					Args: []string{"/bin/true"}, Env: []string{"PATH=/bin"}, Resources: sandbox.Resources{Network: mode}, Isolation: tc.isolation})
				if err != nil {
					b.Fatal(err)
				}
				if exit, err := sb.Wait(ctx); err != nil || exit.Code != 0 {
					b.Fatalf("%v %+v", err, exit)
				}
				t1 := time.Now()
				if err := sb.Delete(ctx); err != nil {
					b.Fatal(err)
				}
				return t1.Sub(t0), time.Since(t1)
			}
			once("bench-warmup-"+name, sandbox.NetworkBridge)
			var none, noneDel, bridge, bridgeDel time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r, d := once(fmt.Sprintf("bench-%s-none-%d", name, i), sandbox.NetworkNone)
				none, noneDel = none+r, noneDel+d
				r, d = once(fmt.Sprintf("bench-%s-bridge-%d", name, i), sandbox.NetworkBridge)
				bridge, bridgeDel = bridge+r, bridgeDel+d
			}
			b.StopTimer()
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(ms(none), "none-start+wait-ms")
			b.ReportMetric(ms(noneDel), "none-delete-ms")
			b.ReportMetric(ms(bridge), "bridge-start+wait-ms")
			b.ReportMetric(ms(bridgeDel), "bridge-delete-ms")
		})
	}
}

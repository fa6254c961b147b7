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
	"github.com/kiln-build/kiln/sandbox"
)

// BenchmarkTrivialRun measures one whole kiln run of `true` (clone, start,
// wait, collect, delete, destroy) on overlay and on btrfs, interleaved with
// the raw baseline `ctr run --rm --rootfs` on an overlay of the same rootfs,
// and reports both and their ratio (goal: kiln/ctr <= 0.75).
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
	addr := testsupport.StartContainerd(b)
	rootfs := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	// Shared shims, as the worker and exec run.
	launcher, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, Namespace: "kiln-bench", ShareShimDir: b.TempDir(), ShimGroups: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer launcher.Close()

	// The baseline's rootfs: an overlay of the same tree, mounted once.
	merged := testsupport.OverlayOf(b, rootfs)

	backends := map[string]func() sandbox.Backend{
		"overlay": func() sandbox.Backend {
			o, err := linux.NewOverlay(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return o
		},
		"btrfs": func() sandbox.Backend {
			o, err := linux.NewBtrfs(testsupport.Btrfs(b))
			if err != nil {
				b.Fatal(err)
			}
			return o
		},
	}
	for _, bench := range []struct{ name, backend, isolation string }{
		{"overlay-sync", "overlay", ""}, {"overlay-warm", "overlay", ""},
		{"btrfs-sync", "btrfs", ""}, {"btrfs-warm", "btrfs", ""},
		{"overlay-gvisor-sync", "overlay", api.IsolationGVisor},
	} {
		name, warm := bench.name, strings.HasSuffix(bench.name, "-warm")
		b.Run(name, func(b *testing.B) {
			if bench.isolation == api.IsolationGVisor {
				testsupport.NeedCommand(b, "runsc")
			}
			be := backends[bench.backend]()
			build, err := be.Begin(ctx, "bench", "")
			if err != nil {
				b.Fatal(err)
			}
			if out, err := exec.Command("cp", "-a", rootfs+"/.", build.Root).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			if _, err := be.Commit(ctx, build, "v1"); err != nil {
				b.Fatal(err)
			}
			r := &sandbox.Runner{Storage: be, Launcher: launcher, RunsDir: b.TempDir(), AsyncTeardown: warm}
			defer r.Close(ctx)
			out := b.TempDir()
			if warm {
				r.Prewarm(ctx, "bench@v1")
			}
			var kiln, ctr time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				cmd := exec.Command(ctrBin, "--address", addr, "-n", "kiln-bench", "run", "--rm", "--rootfs", merged, fmt.Sprintf("ctr-%s-%d", name, i), "/bin/true")
				if o, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("ctr run: %v: %s", err, o)
				}
				t1 := time.Now()
				id := fmt.Sprintf("b-%s-%d", name, i)
				res, err := r.Run(ctx, sandbox.Request{RunID: id, Job: "bench", Snapshot: "bench@v1", Script: "true", OutDir: filepath.Join(out, id), Isolation: bench.isolation})
				if err != nil || res.ExitCode() != 0 {
					b.Fatalf("kiln run: %v %+v", err, res)
				}
				kiln += time.Since(t1)
				ctr += t1.Sub(t0)
				r.Forget(id)
				if warm {
					r.Prewarm(ctx, "bench@v1")
				}
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(ctr.Milliseconds())/n, "ctr-ms/run")
			b.ReportMetric(float64(kiln.Milliseconds())/n, "kiln-ms/run")
			b.ReportMetric(float64(kiln)/float64(ctr), "kiln/ctr")
		})
	}
}

package linux_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/sandbox"
)

// BenchmarkCacheRun measures what a cache adds to a trivial run (`true`,
// or writing one small file into the cache), whole Runner.Run on overlay
// clones: runs that name no cache, one that names a cache and adds nothing,
// and one that adds a file (merged after the run) are interleaved, and each
// is reported in ms/run.
//
//	go test -run '^$' -bench CacheRun -benchtime 40x ./linux/
func BenchmarkCacheRun(b *testing.B) {
	testsupport.NeedRoot(b)
	addr := testsupport.StartContainerd(b)
	rootfs := testsupport.BusyboxRootfs(b)
	ctx := context.Background()
	launcher, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, Namespace: "kiln-bench", ShareShimDir: b.TempDir(), ShimGroups: 2, SandboxInit: testsupport.SandboxInit(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer launcher.Close()
	be, err := treestore.NewOverlay(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	testsupport.CommitImage(b, be, "bench", "v1", rootfs)
	r := &sandbox.Runner{Storage: be, Launcher: launcher, RunsDir: b.TempDir()}
	defer r.Close(ctx)
	def := cache.Def{Name: "c", Dir: b.TempDir(), Target: "/var/cache/c"}
	out := b.TempDir()
	modes := []struct {
		name   string
		caches []cache.Def
		script string
	}{
		{"none", nil, "true"},
		{"cache", []cache.Def{def}, "true"},
		{"cache-write", []cache.Def{def}, "echo x > /var/cache/c/f$KILN_RUN"},
	}
	spent := make([]time.Duration, len(modes))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for m, mode := range modes {
			id := fmt.Sprintf("c-%s-%d", mode.name, i)
			t0 := time.Now()
			res, err := r.Run(ctx, sandbox.Request{RunID: id, Job: "bench", Snapshot: "bench@v1", Script: mode.script, Caches: mode.caches, OutDir: filepath.Join(out, id)})
			if err != nil || res.ExitCode() != 0 {
				b.Fatalf("%s run: %v %+v", mode.name, err, res)
			}
			spent[m] += time.Since(t0)
			r.Forget(id)
		}
	}
	b.StopTimer()
	for m, mode := range modes {
		b.ReportMetric(float64(spent[m].Microseconds())/1000/float64(b.N), mode.name+"-ms/run")
	}
	if files, _ := cache.Files(def.Dir); len(files) != b.N {
		b.Fatalf("cache holds %d files after %d writing runs", len(files), b.N)
	}
}

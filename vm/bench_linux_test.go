package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// firstWrite records when the guest's console first says anything.
type firstWrite struct {
	mu    sync.Mutex
	at    time.Time
	bytes bytes.Buffer
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() && len(p) > 0 {
		f.at = time.Now()
	}
	return f.bytes.Write(p)
}

// BenchmarkBoot boots a trivial job (echo) under TCG with kiln's boot
// settings and with each of them undone, and reports the time from Start
// (the run is claimed, its clone made) to the job's first output, and to
// the guest's end, and qemu's CPU time. Run with:
//
//	go test ./vm -run '^$' -bench Boot -benchtime 3x
func BenchmarkBoot(b *testing.B) {
	testsupport.NeedVM(b)
	root := testsupport.BusyboxRootfs(b)
	dir := filepath.Join(b.TempDir(), "vm")
	for _, bc := range []struct {
		name    string
		machine string
		boot    bootSettings
	}{
		{"kiln-q35-qboot", "q35", bootSettings{}},
		{"q35-seabios", "q35", bootSettings{seabios: true}},
		{"microvm", "microvm", bootSettings{}},
		{"no-cmdline-tuning", "q35", bootSettings{plainCmdline: true}},
		{"compressed-kernel", "q35", bootSettings{packedKernel: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, err := New(Options{Dir: dir, Accel: "tcg", Machine: bc.machine}, nil)
			if err != nil {
				b.Fatal(err)
			}
			l.boot = bc.boot
			t0 := time.Now()
			if _, err := l.ensureInitrd(); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := l.ensureKernel(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.Logf("initramfs %s, kernel unpack %s (both once per kernel, cached)", t1.Sub(t0), time.Since(t1))
			var first, total, cpu, uptime time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				con := &firstWrite{}
				start := time.Now()
				sb, err := l.Start(context.Background(), sandbox.Spec{
					RunID: "bench", Root: root, Args: []string{"/bin/sh", "-c", "cat /proc/uptime"},
					Env: []string{"PATH=/bin"}, Cwd: "/", Hostname: "bench", Console: con,
				})
				if err != nil {
					b.Fatal(err)
				}
				exit, err := sb.Wait(context.Background())
				total += time.Since(start)
				if ps := sb.(*guest).cmd.ProcessState; ps != nil {
					cpu += ps.UserTime() + ps.SystemTime()
				}
				sb.Delete(context.Background())
				if err != nil || exit.Code != 0 {
					b.Fatalf("exit %+v, %v: %s", exit, err, con.bytes.String())
				}
				first += con.at.Sub(start)
				var up float64
				fmt.Sscan(con.bytes.String(), &up)
				uptime += time.Duration(up * float64(time.Second))
			}
			// The guest's clock runs with the host's under TCG: its uptime
			// when the job starts is the kernel and init's share of the
			// time to first output; the rest is qemu, firmware and loading.
			b.ReportMetric(float64(uptime.Milliseconds())/float64(b.N), "ms-guest-uptime")
			b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "ms-to-first-output")
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-whole-run")
			// CPU time of qemu: what the boot costs, less skewed than
			// wall time on a loaded host.
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "qemu-cpu-ms")
		})
	}
	os.RemoveAll(dir)
}

package netcni_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/netcni"
)

// BenchmarkSetupTeardown measures what bridge networking adds to a run:
// one Setup (namespace, ptp veth, host-local lease, NAT and firewall rules
// through the plugins) and one Teardown, each timed on its own. With
// "pool", Setup takes a network made ahead (the pool refills, untimed,
// before the next iteration), which is what a worker's run waits for.
//
//	go test -run '^$' -bench SetupTeardown -benchtime 20x ./linux/netcni/
func BenchmarkSetupTeardown(b *testing.B) {
	for _, pool := range []int{0, 1} {
		name := "no-pool"
		if pool > 0 {
			name = "pool"
		}
		b.Run(name, func(b *testing.B) {
			n := testsupport.Network(b, func(c *netcni.Config) { c.Pool = pool })
			ctx := context.Background()
			// The first Setup also prepares the host (rules, forwarding).
			if _, err := n.Setup(ctx, "warmup"); err != nil {
				b.Fatal(err)
			}
			if err := n.Teardown(ctx, "warmup"); err != nil {
				b.Fatal(err)
			}
			var setup, teardown time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if err := n.WaitPool(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				id := fmt.Sprintf("b%d", i)
				t0 := time.Now()
				if _, err := n.Setup(ctx, id); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := n.Teardown(ctx, id); err != nil {
					b.Fatal(err)
				}
				setup += t1.Sub(t0)
				teardown += time.Since(t1)
			}
			b.StopTimer()
			b.ReportMetric(float64(setup.Microseconds())/1000/float64(b.N), "setup-ms")
			b.ReportMetric(float64(teardown.Microseconds())/1000/float64(b.N), "teardown-ms")
		})
	}
}

package netcni_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// BenchmarkSetupTeardown measures what bridge networking adds to a run:
// one Setup (namespace, ptp veth, host-local lease, NAT and firewall rules
// through the plugins) and one Teardown, each timed on its own.
//
//	go test -run '^$' -bench SetupTeardown -benchtime 20x ./linux/netcni/
func BenchmarkSetupTeardown(b *testing.B) {
	n := testsupport.Network(b)
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
}

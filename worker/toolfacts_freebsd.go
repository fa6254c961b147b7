package worker

import (
	"context"

	"github.com/kiln-build/kiln/config"
)

// toolFacts: a jail runs its code on the host's own kernel with no
// runtime between; there is no runc nor qemu to record.
func toolFacts(ctx context.Context, cfg *config.Host, f map[string]string) {}

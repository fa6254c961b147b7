package platform

import (
	"context"
	"errors"
	"os"
	"path/filepath"
)

// Leftover is a sandbox or shim anchor on this host whose data dir no
// longer exists (or no longer has the identity it was made under): its
// worker is gone for good, and nothing will ever reap it but `kiln host gc`.
// Or it is the record of a user namespace range that nothing uses any more
// (Linux), which the next sandbox start would also free.
type Leftover struct {
	ID      string // container or jail name; "userns/<n>" for a range
	Owner   string // data dir identity it carries; "" if made before identities
	DataDir string // path it recorded; "" if unknown
	Kind    string // KindSandbox, KindShimAnchor or KindIDRange
}

// Kinds of Leftover.
const (
	KindSandbox    = "sandbox"
	KindShimAnchor = "shim anchor"
	KindIDRange    = "id range"
)

// orphaned reports whether a thing owned by owner and recorded as made
// from dataDir outlived its data dir. A data dir that exists with that
// identity is alive (its worker may merely be stopped) and is left alone.
func orphaned(owner, dataDir string) bool {
	if owner == "" || dataDir == "" {
		return true
	}
	id, err := readIdentity(filepath.Join(dataDir, IdentityFile))
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	// Unreadable: do not guess.
	return err == nil && id != owner
}

// Leftovers lists the host's leftovers of data dirs that no longer exist
// (never this host's own).
func (h *Host) Leftovers(ctx context.Context) ([]Leftover, error) {
	return leftovers(ctx, h)
}

// RemoveLeftover kills and deletes one leftover found by Leftovers.
func (h *Host) RemoveLeftover(ctx context.Context, l Leftover) error {
	return removeLeftover(ctx, h, l)
}

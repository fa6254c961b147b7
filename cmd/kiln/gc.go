package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/platform"
)

func newHostGCCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc [--dry-run]",
		Short: "Remove sandboxes and shim anchors of data dirs that no longer exist on this host",
		Long: `List and remove what kiln processes of other data dirs on this host left
behind once those data dirs are gone: sandboxes (containers) and shim anchors
whose data dir no longer exists, or no longer has the identity they were made
under. Things of a data dir that still exists are left alone, whether its
worker runs or not, and so are this host config's own (its worker reaps
those). Workers never remove other data dirs' leftovers on their own.

Removing a sandbox frees its user namespace id range too. Records of id
ranges that nothing uses any more (a kiln process killed while deleting a
sandbox), of any data dir, are listed and freed as "id range" userns/N
(the next sandbox start would free them as well).

Each line printed is: ID, kind, owner identity, data dir. With --dry-run
nothing is removed. Exits 1 if anything could not be removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				return hostGC(cmd.Context(), h, dryRun, cmd.OutOrStdout())
			})
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the leftovers, remove nothing")
	return cmd
}

// hostGC lists (and unless dryRun removes) the leftovers of data dirs that
// no longer exist, one line each on out.
func hostGC(ctx context.Context, h *platform.Host, dryRun bool, out io.Writer) error {
	list, err := h.Leftovers(ctx)
	if err != nil {
		return fmt.Errorf("host gc: %w", err)
	}
	var errs []error
	for _, l := range list {
		owner, dir := l.Owner, l.DataDir
		if owner == "" {
			owner = "-"
		}
		if dir == "" {
			dir = "-"
		}
		verb := "removed"
		if dryRun {
			verb = "would remove"
		} else if err := h.RemoveLeftover(ctx, l); err != nil {
			errs = append(errs, err)
			verb = "failed"
		}
		fmt.Fprintf(out, "%s\t%s\t%s\towner=%s\tdata_dir=%s\n", verb, l.ID, l.Kind, owner, dir)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("host gc: %w", err)
	}
	return nil
}

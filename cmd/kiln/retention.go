package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// newServerGCCmd builds `kiln server gc`.
func newServerGCCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc [--dry-run]",
		Short: "Collect now on a running server: old runs, their consoles, unreferenced blobs",
		Long: `Ask the running server (--server, with an admin token) to collect now, as it
does every [retention] interval: finished runs that the retention rules no
longer keep go with their consoles, artifact records and attestations, then
every blob file that nothing references (no run's artifacts, no job's
inputs, no upload within the grace period) and that nothing used within the
grace period. Runs kept with 'kiln run keep', the last keep_last runs of
each job, runs that finished within keep_for, and every member of a
reproduce group with a member that stays are kept (docs/retention.md).

It prints what went: runs, consoles, blobs and bytes, and what remains.
With --dry-run nothing is removed and it prints what would go. When another
collection is running (the schedule's, or another replica's), it says so
and removes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rep, err := c.GC(cmd.Context(), dryRun)
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), rep, func(tw *tabwriter.Writer) {
				if rep.Busy {
					fmt.Fprintln(tw, "another collection is running: nothing done")
					return
				}
				verb := "removed"
				if rep.DryRun {
					verb = "would remove"
				}
				fmt.Fprintf(tw, "%s:\t%d runs, %d consoles (%d bytes), %d blobs (%d bytes): %d bytes\n",
					verb, rep.Runs, rep.Consoles, rep.ConsoleBytes, rep.Blobs, rep.BlobBytes, rep.Bytes)
				fmt.Fprintf(tw, "kept:\t%d finished runs, %d blobs (%d bytes)\n", rep.Kept, rep.BlobsKept, rep.BlobBytesKept)
				fmt.Fprintf(tw, "took:\t%s\n", rep.Took.Std())
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would go, remove nothing")
	return cmd
}

// newRunKeepCmd builds `kiln run keep` and `kiln run unkeep`.
func newRunKeepCmd(g *globals, keep bool) *cobra.Command {
	use, short, long := "keep RUN", "Keep a run forever, whatever the retention rules say",
		`Mark a finished (or still running) run as kept: collection never removes it,
its console nor its artifacts, and the other members of its reproduce group
stay with it. 'kiln run unkeep' hands it back to the retention rules
(docs/retention.md).`
	if !keep {
		use, short, long = "unkeep RUN", "Hand a kept run back to the retention rules",
			`Undo 'kiln run keep': the run is kept again only while the retention rules
(keep_last, keep_for) or its reproduce group keep it (docs/retention.md).`
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.KeepRun(cmd.Context(), args[0], keep)
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) {
				state := "kept"
				if !r.Kept {
					state = "under the retention rules"
				}
				fmt.Fprintf(tw, "run %s: %s\n", r.ID, state)
			})
		},
	}
}

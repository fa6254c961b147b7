package main

import (
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/worker"
)

// newHostFactsCmd is `kiln host facts`; the host command adds it.
func newHostFactsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "facts",
		Short: "Print what this host can do, as its worker reports it",
		Long: `Print what this host can do, as its worker reports it to the server: OS,
kernel, distribution, native and emulated architectures (binfmt_misc handlers
with the F flag, or binmiscctl activators on FreeBSD), CPUs, memory, free
space of data_dir, storage kind, containerd version ("unreachable" when it
does not answer), images with their snapshot versions, and the hooks, host
tools, slots and labels the host config (--config) defines.

Text is one "key  value" line per fact, sorted; --output json prints one
JSON object of the same keys. Runs on the host itself; needs no server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadHostConfig(g)
			if err != nil {
				return err
			}
			facts := worker.HostFacts(cmd.Context(), cfg, nil)
			return g.printList(cmd.OutOrStdout(), facts, func(tw *tabwriter.Writer) {
				keys := make([]string, 0, len(facts))
				for k := range facts {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(tw, "%s\t%s\n", k, facts[k])
				}
			})
		},
	}
	addHostConfigFlag(cmd, g)
	return cmd
}

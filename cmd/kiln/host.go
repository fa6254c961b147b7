package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Enroll, list, drain and remove build hosts",
	}
	cmd.AddCommand(newHostTokenCmd(g), newHostListCmd(g), newHostDrainCmd(g), newHostRemoveCmd(g), newHostFactsCmd(g), newHostGCCmd(g), newHostKeysCmd(g))
	return cmd
}

// newHostTokenCmd builds `kiln host token`.
func newHostTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Enrollment tokens"}
	cmd.AddCommand(newHostTokenCreateCmd(g))
	return cmd
}

// newHostTokenCreateCmd builds `kiln host token create`.
func newHostTokenCreateCmd(g *globals) *cobra.Command {
	var labels string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use enrollment token; prints the token",
		Long: `Create a single-use, expiring enrollment token for 'kiln worker enroll'. The
host that enrolls with it gets --labels (k=v,...), which jobs can require with
[constraints] labels.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			t, err := c.CreateEnrollmentToken(cmd.Context(), api.EnrollmentTokenRequest{Labels: l, TTL: api.Duration(ttl)})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			return nil
		},
	}
	cmd.Flags().StringVar(&labels, "labels", "", "labels for the host, k=v,k2=v2")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "token lifetime (default: the server's enrollment_ttl, 24h)")
	return cmd
}

// newHostListCmd builds `kiln host list`.
func newHostListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrolled hosts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hs, err := c.ListHosts(cmd.Context())
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), hs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tOS/ARCH\tSLOTS\tLEASES\tLABELS\tLAST SEEN\tSTATE\tSIGNING KEY")
				for _, h := range hs {
					var ls []string
					for k, v := range h.Labels {
						ls = append(ls, k+"="+v)
					}
					sort.Strings(ls)
					state := "active"
					if h.Drained {
						state = "drained"
					}
					fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%d\t%s\t%s\t%s\t%s\n", h.Name, orDash(h.Facts.OS), orDash(h.Facts.Arch), h.Facts.Slots, h.Leases,
						orDash(strings.Join(ls, ",")), fmtTime(h.LastSeen), state, orDash(h.KeyID))
				}
			})
		},
	}
	return cmd
}

// newHostDrainCmd builds `kiln host drain`.
func newHostDrainCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Give a host no new runs (running ones finish)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			_, err = c.DrainHost(cmd.Context(), args[0])
			return err
		},
	}
	return cmd
}

// newHostRemoveCmd builds `kiln host remove`.
func newHostRemoveCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a host: revoke its credential and requeue its runs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.RemoveHost(cmd.Context(), args[0])
		},
	}
	return cmd
}

package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke client tokens (admin token)",
		Long: `Client tokens let users and CI manage jobs, runs and artifacts without the
admin token: they cannot enroll, drain or remove hosts, nor manage tokens.
Enrollment tokens for hosts are 'kiln host token create'.

A client token sees and changes only its own jobs, with their runs, consoles,
groups and artifacts; tokens made with the same --group share their jobs.
The admin token sees everything.`,
	}
	var name, group string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME [--group G] [--ttl D]",
		Short: "Create a client token; prints the token (shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.CreateClientToken(cmd.Context(), api.ClientTokenRequest{Name: name, Group: group, TTL: api.Duration(ttl)})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "the token's name, to list and revoke it by (required)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "token lifetime (default: it never expires)")
	create.Flags().StringVar(&group, "group", "", "share jobs with the other tokens of this group (default: the token owns its jobs alone)")
	_ = create.MarkFlagRequired("name")

	list := &cobra.Command{
		Use:   "list",
		Short: "List client tokens (never the tokens themselves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.ListClientTokens(cmd.Context())
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), ts, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tGROUP\tCREATED\tEXPIRES\tLAST USED\tSTATE")
				for _, t := range ts {
					state := "active"
					if t.Expired {
						state = "expired"
					}
					exp := "never"
					if !t.Expires.IsZero() {
						exp = fmtTime(t.Expires)
					}
					grp := t.Group
					if grp == "" {
						grp = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, grp, fmtTime(t.Created), exp, fmtTime(t.LastUsed), state)
				}
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a client token; requests with it are refused at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.RevokeClientToken(cmd.Context(), args[0])
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// The server-held images of the fleet (docs/images-server.md): listing and
// removing versions. An image command acts on the server's images when
// --server is given on its command line, or --fleet (which takes the
// server from KILN_SERVER); else on this host's.

// serverMode reports whether an image command acts on the server's images.
func serverMode(cmd *cobra.Command, fleet bool) bool {
	return fleet || cmd.Flags().Changed("server")
}

// addFleetFlag adds --fleet to an image command that has a server side.
func addFleetFlag(cmd *cobra.Command, fleet *bool) {
	cmd.Flags().BoolVar(fleet, "fleet", false, "act on the server's images (the server of --server or KILN_SERVER); giving --server does too")
}

// listServerImages prints the server's image versions (of name, "": all)
// with the hosts that hold each.
func listServerImages(cmd *cobra.Command, g *globals, name string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	vs, err := c.ListImageVersions(cmd.Context(), name)
	if err != nil {
		return err
	}
	return g.printList(cmd.OutOrStdout(), vs, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "IMAGE\tARCH\tOS\tMETHOD\tDIGEST\tSIZE\tTAR\tCREATED\tHOSTS")
		for _, v := range vs {
			hosts := strings.Join(v.Hosts, ",")
			if hosts == "" {
				hosts = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Ref(), v.Arch, v.OS, dash(v.Method),
				shortDigest(v.TarDigest), humanSize(v.BlobSize), humanSize(v.TarSize), fmtTime(v.Created), hosts)
		}
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortDigest shortens "sha256:<hex>" for a table; --output json has it
// whole.
func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// parseVersionRef reads NAME@VERSION with a version number.
func parseVersionRef(s string) (string, int, error) {
	name, ver, ok := strings.Cut(s, "@")
	n, err := strconv.Atoi(ver)
	if !ok || !names.Valid(name) || err != nil || n <= 0 {
		return "", 0, fmt.Errorf("%q: want NAME@VERSION, e.g. bookworm@3 (kiln image list --fleet shows them)", s)
	}
	return name, n, nil
}

func newImageRmCmd(g *globals) *cobra.Command {
	var fleet bool
	cmd := &cobra.Command{
		Use:   "rm --server URL NAME@VERSION",
		Short: "Remove a version of a server-held image (admin token)",
		Long: `Removes one version of an image the server holds for the fleet. It is
refused while runs that have not ended (queued, leased or running) are
pinned to the version; cancel them or wait. A removed version's number is
never given to another tree. Hosts that hold the version keep it until
their [images] keep prunes it. This host's own images are removed with
'kiln image delete -n NAME'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !serverMode(cmd, fleet) {
				return errors.New("kiln image rm acts on the server's images: give --server URL or --fleet (this host's images: kiln image delete -n NAME)")
			}
			name, version, err := parseVersionRef(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RemoveImageVersion(cmd.Context(), name, version); err != nil {
				if errors.Is(err, api.ErrConflict) {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s@%d\n", name, version)
			return nil
		},
	}
	addFleetFlag(cmd, &fleet)
	return cmd
}

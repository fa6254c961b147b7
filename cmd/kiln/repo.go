package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/aptrepo"
)

func newRepoCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Create and manage signed package repositories the server publishes into",
		Long: `A repository is a signed apt repository the server keeps and serves at
SERVER/repos/NAME/ (dists/ and pool/): without a token when it was created
with --public, with any admin, client or worker token otherwise (HTTP basic
auth with the token as the password, which apt's auth.conf sends).

Jobs publish into it with a [publish] table (docs/job-file.md): repo = "NAME",
when = "success" or "reproducible". A package version, once published, keeps
its bytes: the same bytes again change nothing, other bytes are refused and
the run says so.

The signing key never leaves the server; 'kiln repo key NAME' prints its
public half for apt's signed-by. See docs/publishing.md.`,
	}
	cmd.AddCommand(newRepoCreateCmd(g), newRepoListCmd(g), newRepoShowCmd(g), newRepoKeyCmd(g), newRepoRmCmd(g), newRepoRemoveCmd(g))
	return cmd
}

func newRepoCreateCmd(g *globals) *cobra.Command {
	var req api.CreateRepoRequest
	var components, arches, publishers, keyFile string
	cmd := &cobra.Command{
		Use:   "create NAME --type apt --suite SUITE [--components main] [--arches amd64,arm64] [--public] [--key FILE]",
		Short: "Create a repository (admin token); prints its signing key's fingerprint",
		Long: `Create a repository and publish its first, empty, index set. The server makes
an OpenPGP signing key (EdDSA) for it, or imports the private key in --key
FILE (armored or binary, without a passphrase: the server signs unattended).
The private key is kept in the server's database and never sent out again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			req.Components = splitList(components)
			req.Arches = splitList(arches)
			req.Publishers = splitList(publishers)
			if keyFile != "" {
				b, err := readBounded(keyFile, aptrepo.MaxKeyFile)
				if err != nil {
					return fmt.Errorf("--key: %w", err)
				}
				if _, err := aptrepo.ParseKey(b); err != nil {
					return fmt.Errorf("--key %s: %w", keyFile, err)
				}
				req.Key = string(b)
			}
			if err := req.Validate(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.CreateRepo(cmd.Context(), &req)
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "repository:\t%s\nfingerprint:\t%s\n", r.Name, r.Fingerprint)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Type, "type", api.RepoTypeApt, `repository type (only "apt")`)
	f.StringVar(&req.Suite, "suite", "", "the suite (dists/SUITE), e.g. bookworm or stable (required)")
	f.StringVar(&components, "components", "main", "comma-separated components; jobs publish into the first unless their [publish] component says")
	f.StringVar(&arches, "arches", "amd64", `comma-separated architectures; packages of architecture "all" are listed under each`)
	f.BoolVar(&req.Public, "public", false, "serve it without a token")
	f.StringVar(&publishers, "publishers", "", "comma-separated client tokens whose jobs may publish here: token:NAME or group:NAME (the admin's jobs always may)")
	f.StringVar(&keyFile, "key", "", "import this OpenPGP private key instead of making one")
	_ = cmd.MarkFlagRequired("suite")
	return cmd
}

func newRepoListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List repositories",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.Repos(cmd.Context())
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), rs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tTYPE\tSUITE\tCOMPONENTS\tARCHES\tPUBLIC\tGENERATION\tPUBLISHED")
				for _, r := range rs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%d\t%s\n", r.Name, r.Type, r.Suite, strings.Join(r.Components, ","),
						strings.Join(r.Arches, ","), r.Public, r.Generation, fmtTime(r.Published))
				}
			})
		},
	}
}

func newRepoShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a repository and its packages",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.Repo(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "repository:\t%s (%s)\nsuite:\t%s\ncomponents:\t%s\narches:\t%s\npublic:\t%v\npublishers:\t%s\nfingerprint:\t%s\ngeneration:\t%d (published %s)\n\n",
					r.Name, r.Type, r.Suite, strings.Join(r.Components, ", "), strings.Join(r.Arches, ", "), r.Public, strings.Join(append([]string{"admin"}, r.Publishers...), ", "), r.Fingerprint, r.Generation, fmtTime(r.Published))
				fmt.Fprintln(tw, "PACKAGE\tVERSION\tARCH\tCOMPONENT\tSIZE\tRUN\tSHA256")
				for _, p := range r.Packages {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Name, p.Version, p.Arch, p.Component, p.Size, orDash(p.Run), p.SHA256)
				}
			})
		},
	}
}

func newRepoKeyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "key NAME",
		Short: "Print a repository's public signing key (armored), for apt's signed-by",
		Long: `Print the repository's public OpenPGP key, armored. Save it with a .asc
name and point apt at it:

  kiln repo key NAME > /etc/apt/keyrings/NAME.asc
  deb [signed-by=/etc/apt/keyrings/NAME.asc] SERVER/repos/NAME SUITE main`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			k, err := c.RepoKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), k)
			return err
		},
	}
}

func newRepoRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete a repository with its packages, index sets and key (admin token)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.RemoveRepo(cmd.Context(), args[0])
		},
	}
}

func newRepoRemoveCmd(g *globals) *cobra.Command {
	var arch string
	cmd := &cobra.Command{
		Use:   "remove NAME PACKAGE VERSION [--arch ARCH]",
		Short: "Take a package version out of a repository and publish the index without it (admin token)",
		Long: `Take PACKAGE VERSION (every architecture, or only --arch) out of the
repository and publish a new index set without it. Its pool file is no longer
served. The version may then be published again, with any bytes: clients that
installed the old bytes will not be told.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.RemoveRepoPackage(cmd.Context(), args[0], args[1], args[2], arch)
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "repository:\t%s\ngeneration:\t%d\npackages:\t%d\n", r.Name, r.Generation, len(r.Packages))
			})
		},
	}
	cmd.Flags().StringVar(&arch, "arch", "", "remove only this architecture's package")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func readBounded(name string, limit int64) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s has %d bytes; at most %d are allowed", name, fi.Size(), limit)
	}
	return os.ReadFile(name)
}

// fmtPublication is one line of a run's or group's publication.
func fmtPublication(p api.Publication) string {
	s := fmt.Sprintf("%s: %s (run %s)", p.Repo, p.State, p.Run)
	if len(p.Packages) > 0 {
		s += " " + strings.Join(p.Packages, ", ")
	}
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	return s
}

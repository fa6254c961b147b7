package main

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

func newArtifactCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "artifact",
		Short: "List and download the files runs left under /out",
	}
	cmd.AddCommand(newArtifactListCmd(g), newArtifactGetCmd(g), newArtifactFindCmd(g), newArtifactVerifyCmd(g))
	return cmd
}

// newArtifactListCmd builds `kiln artifact list`.
func newArtifactListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list RUN",
		Short: "List a run's artifacts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			as, err := c.ListArtifacts(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), as, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "PATH\tSIZE\tMODE\tSHA256")
				for _, a := range as {
					fmt.Fprintf(tw, "%s\t%d\t%04o\t%s\n", a.Path, a.Size, a.Mode, a.SHA256)
				}
			})
		},
	}
	return cmd
}

// newArtifactFindCmd builds `kiln artifact find`.
func newArtifactFindCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "find SHA256",
		Short: "List every run that produced a file with this sha256",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			refs, err := c.FindArtifacts(cmd.Context(), strings.ToLower(args[0]))
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), refs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "RUN\tJOB\tREV\tPATH\tSIZE\tCREATED")
				for _, a := range refs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", a.Run, a.Job, a.Revision, a.Path, a.Size, fmtTime(a.Created))
				}
			})
		},
	}
	return cmd
}

// newArtifactGetCmd builds `kiln artifact get`.
func newArtifactGetCmd(g *globals) *cobra.Command {
	var outDir string
	cmd := &cobra.Command{
		Use:   "get RUN [PATH]",
		Short: "Download a run's artifacts (all, or PATH: a file or directory) into -o DIR",
		Long: `Download a run's artifacts into -o DIR (default: the current directory),
keeping their paths below /out. Each file is checked against its sha256. Nothing
is ever written outside DIR, whatever paths the server sends.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			as, err := c.ListArtifacts(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			want := ""
			if len(args) == 2 {
				want = strings.Trim(path.Clean(args[1]), "/")
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return err
			}
			root, err := os.OpenRoot(outDir)
			if err != nil {
				return err
			}
			defer root.Close()
			n := 0
			for _, a := range as {
				if want != "" && want != "." && a.Path != want && !strings.HasPrefix(a.Path, want+"/") {
					continue
				}
				if err := getArtifact(cmd, c, root, a); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), filepath.Join(outDir, filepath.FromSlash(a.Path)))
				n++
			}
			if n == 0 && want != "" {
				return fmt.Errorf("run %s has no artifact %q", args[0], want)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&outDir, "output-dir", "o", ".", "directory to write into")
	return cmd
}

// getArtifact downloads one artifact below root. os.Root refuses any path
// (or symlink on the way) that leaves the directory; ValidRelPath refuses
// absolute and ".." paths before that.
func getArtifact(cmd *cobra.Command, c *api.Client, root *os.Root, a api.Artifact) error {
	if err := names.ValidRelPath(a.Path); err != nil || !filepath.IsLocal(filepath.FromSlash(a.Path)) {
		return fmt.Errorf("artifact path %q refused: it would leave the output directory", a.Path)
	}
	p := filepath.FromSlash(a.Path)
	if dir := filepath.Dir(p); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	tmp := p + ".kiln-part"
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = c.DownloadBlob(cmd.Context(), a.SHA256, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(tmp, fs.FileMode(a.Mode&0o777))
	}
	if err == nil {
		err = root.Rename(tmp, p)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("artifact %s: %w", a.Path, err)
	}
	return nil
}

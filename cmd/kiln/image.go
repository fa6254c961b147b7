package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/platform"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage this host's base images (create, update, list, snapshots, delete)",
		Long: `Base images are named root filesystems on this host, kept as read-only
versioned snapshots (NAME@20261121T120000Z) that every run clones. Methods:
busybox (tiny static rootfs, any -a Debian ships busybox-static for),
debootstrap (-v SUITE, default bookworm; --packages to include; foreign -a
through qemu-user), tar=PATH (gzip, xz or zstd rootfs tarball), dir=PATH (an
existing tree), freebsd (dist sets of -v RELEASE; FreeBSD hosts only).`,
	}
	cmd.AddCommand(newImageCreateCmd(g), newImageListCmd(g), newImageSnapshotsCmd(g),
		newImageUpdateCmd(g), newImageDeleteCmd(g))
	cmd.AddCommand(newImagePublishCmd(g))
	cmd.AddCommand(newImageRmCmd(g))                                                      // the server's images: image_server.go
	cmd.AddCommand(newImageBuildCmd(g), newImageScheduleCmd(g), newImageUnscheduleCmd(g)) // imagebuild.go
	return cmd
}

// withHost opens this host from --config and runs fn with it.
func withHost(ctx context.Context, g *globals, fn func(h *platform.Host) error) error {
	cfg, err := loadHostConfig(g)
	if err != nil {
		return err
	}
	h, err := platform.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// progressTo is where build progress goes: stderr, or nowhere with -q.
// meterTo shows a build's transfers as byte bars on the command's stderr
// when it is a terminal (see newByteBar), and nothing otherwise.
func meterTo(cmd *cobra.Command, quiet bool) images.Meter {
	return func(desc string, total int64) (func(int64), func()) {
		b := newByteBar(cmd.ErrOrStderr(), quiet, desc, total)
		return b.set, b.done
	}
}

func progressTo(cmd *cobra.Command, quiet bool) io.Writer {
	if quiet {
		return io.Discard
	}
	return cmd.ErrOrStderr()
}

func newImageCreateCmd(g *globals) *cobra.Command {
	var o images.CreateOptions
	cmd := &cobra.Command{
		Use:   "create -n NAME -m METHOD [-v VERSION] [-a ARCH] [--packages a,b]",
		Short: "Build a new image and print its first snapshot (NAME@VERSION)",
		Example: `  kiln image create -n bookworm -m debootstrap
  kiln image create -n bookworm-arm64 -m debootstrap -a arm64 --packages build-essential
  kiln image create -n tiny-s390x -m busybox -a s390x
  kiln image create -n alpine -m tar=/srv/alpine-minirootfs.tar.gz`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				o.Progress = progressTo(cmd, o.Quiet)
				o.Meter = meterTo(cmd, o.Quiet)
				s, err := h.Images().Create(cmd.Context(), o)
				if err != nil {
					return fmt.Errorf("image create %s: %w", o.Name, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), s.Ref())
				return nil
			})
		},
	}
	addHostConfigFlag(cmd, g)
	f := cmd.Flags()
	// The global -v is --verbose; here -v is the method's version, as in
	// poudriere. Declaring "verbose" locally keeps the global one from
	// being merged in with its clashing shorthand (cobra would panic).
	f.BoolVar(&g.verbose, "verbose", false, "debug logging")
	f.StringVarP(&o.Name, "name", "n", "", "image name (required)")
	f.StringVarP(&o.Method, "method", "m", "", "busybox | debootstrap | tar=PATH | dir=PATH | freebsd (required)")
	f.StringVarP(&o.Version, "version", "v", "", "method version: Debian suite (default bookworm) or FreeBSD release")
	f.StringVarP(&o.Arch, "arch", "a", "", "architecture (default: this host's; tar=/dir=: detected)")
	f.StringSliceVar(&o.Packages, "packages", nil, "extra packages (debootstrap) or dist sets (freebsd: lib32)")
	f.BoolVarP(&o.Quiet, "quiet", "q", false, "no progress output")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("method")
	return cmd
}

func newImageListCmd(g *globals) *cobra.Command {
	var fleet bool
	var name string
	cmd := &cobra.Command{
		Use:   "list [--server URL | --fleet [-n NAME]]",
		Short: "List images with their newest snapshot, or the server's image versions",
		Long: `Lists this host's images with their newest snapshot. With --server URL
(or --fleet, for the server of KILN_SERVER) it lists the versions of the
images the server holds for the fleet instead: digest, compressed (SIZE)
and tar (TAR) size, and the hosts that report holding each version.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serverMode(cmd, fleet) {
				return listServerImages(cmd, g, name)
			}
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				imgs, err := h.Images().List(cmd.Context())
				if err != nil {
					return err
				}
				return g.printList(cmd.OutOrStdout(), imgs, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "NAME\tNEWEST\tARCH\tOS\tMETHOD\tSNAPSHOTS\tSIZE\tCREATED")
					for _, i := range imgs {
						s := i.Newest
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", i.Name, s.Version, s.Arch, s.OS,
							methodString(s), i.Snapshots, humanSize(s.Size), fmtTime(s.Created))
					}
				})
			})
		},
	}
	addHostConfigFlag(cmd, g)
	addFleetFlag(cmd, &fleet)
	cmd.Flags().StringVarP(&name, "name", "n", "", "with --server or --fleet: only the versions of this image")
	return cmd
}

func newImageSnapshotsCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "snapshots -n NAME",
		Short: "List the snapshots of an image, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				snaps, err := h.Images().Snapshots(cmd.Context(), name)
				if err != nil {
					return err
				}
				return g.printList(cmd.OutOrStdout(), snaps, func(tw *tabwriter.Writer) {
					fmt.Fprintln(tw, "SNAPSHOT\tARCH\tOS\tMETHOD\tPACKAGES\tSIZE\tCREATED\tPARENT")
					for _, s := range snaps {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Ref(), s.Arch, s.OS, methodString(s),
							orDash(strings.Join(s.Packages, ",")), humanSize(s.Size), fmtTime(s.Created), orDash(s.Parent))
					}
				})
			})
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().StringVarP(&name, "name", "n", "", "image name (required)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newImageUpdateCmd(g *globals) *cobra.Command {
	var (
		name  string
		keep  int
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "update -n NAME [--keep N]",
		Short: "Make a new snapshot of an image (apt-get dist-upgrade, or a rebuild) and print it",
		Long: `update copies the newest snapshot and upgrades the copy in a sandbox with
network (debootstrap images: apt-get update && apt-get dist-upgrade), or
rebuilds the image from its method (busybox, tar=, dir=, freebsd), and commits
a new snapshot. Runs on older snapshots continue untouched. --keep N then
deletes all but the newest N snapshots, except those a run still uses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return withHost(ctx, g, func(h *platform.Host) error {
				m := h.Images()
				newest, err := m.Resolve(ctx, name)
				if err != nil {
					return err
				}
				o := images.UpdateOptions{Name: name, Progress: progressTo(cmd, quiet), Quiet: quiet}
				if newest.Method == "debootstrap" {
					if o.Launcher, err = h.Launcher(ctx); err != nil {
						return fmt.Errorf("image update %s: %w", name, err)
					}
					// The update sandbox is named and held like a run of
					// this data dir, so a worker on it leaves it alone.
					runner, err := h.Runner(ctx, "")
					if err != nil {
						return fmt.Errorf("image update %s: %w", name, err)
					}
					o.Hold = runner.Hold
				}
				s, err := m.UpdateWith(ctx, o)
				if err != nil {
					return fmt.Errorf("image update %s: %w", name, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), s.Ref())
				if keep > 0 {
					if err := m.Prune(ctx, name, keep); err != nil {
						return fmt.Errorf("image update %s: prune to %d: %w", name, keep, err)
					}
				}
				return nil
			})
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().StringVarP(&name, "name", "n", "", "image name (required)")
	cmd.Flags().IntVar(&keep, "keep", 0, "afterwards keep only the newest N snapshots (and those in use); 0 keeps all")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newImageDeleteCmd(g *globals) *cobra.Command {
	var (
		name  string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "delete -n NAME [--force]",
		Short: "Delete an image and all its snapshots",
		Long: `delete refuses while runs still use a snapshot of the image; --force
destroys their clones first (those runs fail).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				return h.Images().Delete(cmd.Context(), name, force)
			})
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().StringVarP(&name, "name", "n", "", "image name (required)")
	cmd.Flags().BoolVar(&force, "force", false, "destroy the clones of runs using the image first")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func methodString(s images.Snapshot) string {
	m := s.Method
	if s.Source != "" {
		m += "=" + s.Source
	}
	if s.MethodVersion != "" {
		m += " " + s.MethodVersion
	}
	return m
}

func humanSize(n int64) string {
	switch {
	case n <= 0:
		return "-"
	case n < 1<<20:
		return fmt.Sprintf("%.0fK", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/worker"
)

// buildFlags are the flags `kiln image build` and `kiln image schedule`
// share: what to build and where.
type buildFlags struct {
	b      api.ImageBuild
	labels string
}

func (f *buildFlags) add(cmd *cobra.Command, g *globals) {
	fl := cmd.Flags()
	// -v is the method's version, as in `kiln image create`.
	fl.BoolVar(&g.verbose, "verbose", false, "debug logging")
	fl.StringVarP(&f.b.Method, "method", "m", "", "busybox | debootstrap | freebsd (required)")
	fl.StringVarP(&f.b.Version, "version", "v", "", "method version: Debian suite (default bookworm) or FreeBSD release")
	fl.StringVarP(&f.b.Arch, "arch", "a", "", "architecture (default: the building host's); a foreign one needs a host with qemu-user for it")
	fl.StringSliceVar(&f.b.Packages, "packages", nil, "extra packages (debootstrap) or dist sets (freebsd: lib32)")
	fl.StringVar(&f.labels, "labels", "", "build only on a host with these labels, k=v,k2=v2")
	fl.StringVar(&f.b.On, "on", "", "build only on this enrolled host (it must fit too)")
	_ = cmd.MarkFlagRequired("method")
}

func (f *buildFlags) request(name, schedule string) (api.BuildImageRequest, error) {
	req := api.BuildImageRequest{Build: f.b, Schedule: schedule}
	req.Build.Name = name
	if req.Build.Arch != "" {
		// Hosts report kiln's names (amd64, arm64): a build of x86_64
		// would otherwise fit no host's facts, or be refused at publish.
		arch, err := qemu.Normalize(req.Build.Arch)
		if err != nil {
			return req, fmt.Errorf("image build %s: arch %q: %w", name, req.Build.Arch, err)
		}
		req.Build.Arch = arch
	}
	l, err := parseLabels(f.labels)
	if err != nil {
		return req, err
	}
	req.Labels = l
	return req, req.Build.Check()
}

func newImageBuildCmd(g *globals) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:   "build NAME -m METHOD [-v VERSION] [-a ARCH] [--packages a,b] [--on HOST | --labels k=v]",
		Short: "Build the next version of a server-held image on a host of the fleet",
		Long: `Queues a run that builds image NAME on a host whose facts fit: the arch
(its own, or a foreign one it runs through qemu-user), the method's OS
(busybox and debootstrap: Linux; freebsd: FreeBSD), --labels and --on. The host
builds the tree as 'kiln image create' does, packs it and uploads it; when the
run succeeds the server publishes it as the next version of NAME (its method
and recipe say how it was made), and runs of jobs naming NAME use it.

The run is a run of the admin job image.NAME, which this command adds or
updates: follow it with 'kiln run info', 'kiln run log'. Prints the run ID.
Needs an admin token.`,
		Example: `  kiln image build bookworm -m debootstrap --packages build-essential
  kiln image build tiny-arm64 -m busybox -a arm64
  kiln image build bookworm -m debootstrap --labels site=fra
  kiln image build bookworm -m debootstrap --on build-01`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[0], "")
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			run, err := c.BuildImage(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("image build %s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), run.ID)
			return nil
		},
	}
	f.add(cmd, g)
	return cmd
}

func newImageScheduleCmd(g *globals) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:   "schedule NAME SPEC -m METHOD [-v VERSION] [-a ARCH] [--packages a,b] [--labels k=v]",
		Short: "Rebuild a server-held image on a schedule (as poudriere's jail -u from cron)",
		Long: `Stores the build of image NAME (the flags of 'kiln image build') with a
schedule: a 5-field cron expression (UTC), @hourly, @daily, @weekly or
"@every DURATION", the syntax of 'kiln job schedule'. Each firing queues a
build; each build that succeeds is published as the next version of NAME.
Nothing is queued now. Stop with 'kiln image unschedule NAME'. Needs an admin
token.`,
		Example: `  kiln image schedule bookworm @weekly -m debootstrap --packages build-essential
  kiln image schedule tiny "0 3 * * *" -m busybox`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[1] == "" {
				return fmt.Errorf("image schedule %s: an empty schedule: use 'kiln image unschedule %s'", args[0], args[0])
			}
			req, err := f.request(args[0], args[1])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ji, err := c.ScheduleImageBuild(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("image schedule %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "next build %s\n", fmtTime(ji.NextFire))
			return nil
		},
	}
	f.add(cmd, g)
	return cmd
}

func newImageUnscheduleCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unschedule NAME",
		Short: "Stop rebuilding a server-held image on a schedule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			_, err = c.ScheduleImageBuild(cmd.Context(), api.BuildImageRequest{Build: api.ImageBuild{Name: args[0]}})
			if err != nil {
				return fmt.Errorf("image unschedule %s: %w", args[0], err)
			}
			return nil
		},
	}
}

// hostBuilder builds image build runs' images with the host's images
// manager (worker.ImageBuilder).
type hostBuilder struct{ m *images.Manager }

var _ worker.ImageBuilder = hostBuilder{}

// Build makes the image as `kiln image create` would, under a name of the
// run's own, packs its snapshot into blob and deletes the image again: the
// server's version is what the fleet uses (a host that runs it fetches it
// like any other host).
func (h hostBuilder) Build(ctx context.Context, runID string, b api.ImageBuild, blob, console io.Writer) (api.ImageBuilt, error) {
	name := "kiln-build-" + runID
	// A worker killed mid-build left its image: the requeued attempt
	// builds again from the start.
	cleanup := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if err := h.m.Delete(dctx, name, true); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			fmt.Fprintf(console, "[kiln] removing the build image %s: %v\n", name, err)
		}
	}
	cleanup()
	defer cleanup()
	s, err := h.m.Create(ctx, images.CreateOptions{Name: name, Method: b.Method, Version: b.Version, Arch: b.Arch,
		Packages: b.Packages, Progress: console})
	if err != nil {
		return api.ImageBuilt{}, err
	}
	snap, st, err := h.m.PackSnapshot(ctx, s.Ref(), blob, images.PackOptions{})
	if err != nil {
		return api.ImageBuilt{}, fmt.Errorf("pack %s: %w", s.Ref(), err)
	}
	return api.ImageBuilt{Arch: snap.Arch, OS: snap.OS, TarDigest: st.TarDigest, TarSize: st.TarSize}, nil
}

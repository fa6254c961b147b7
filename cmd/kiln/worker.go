package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/worker"
)

func init() { register(newWorkerCmd) }

func newWorkerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "The host daemon: enroll this host with a server, then run leased jobs",
	}
	cmd.AddCommand(newWorkerEnrollCmd(g), newWorkerRunCmd(g))
	return cmd
}

func newWorkerEnrollCmd(g *globals) *cobra.Command {
	var name, labels string
	cmd := &cobra.Command{
		Use:   "enroll --server URL --token ENROLLMENT-TOKEN [--name N] [--labels k=v,...]",
		Short: "Enroll this host and write its credential into the host config",
		Long: `Enroll this host with the server using a single-use enrollment token
(from 'kiln host token create'). The worker's own credential, the server URL,
the host name and labels are written into the host config (--config, default
/etc/kiln/worker.toml), which is created 0600 if it does not exist.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.server == "" || g.token == "" {
				return errors.New("enroll needs --server URL and --token ENROLLMENT-TOKEN")
			}
			path, explicit := g.hostConfig, g.hostConfig != ""
			if !explicit {
				path = config.DefaultHostConfigPath
			}
			cfg, err := config.LoadHost(path, false)
			if err != nil {
				return err
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			facts := baseFacts(cmd.Context(), cfg)
			for k, v := range lbl {
				if facts.Labels == nil {
					facts.Labels = map[string]string{}
				}
				facts.Labels[k] = v
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			resp, err := api.NewClient(g.server, g.token).Enroll(cmd.Context(), api.EnrollRequest{Name: name, Facts: facts})
			if err != nil {
				return fmt.Errorf("enroll: %w", err)
			}
			cfg.Server.URL = strings.Join(api.Addresses(g.server), ",")
			cfg.Server.Token = resp.Token
			cfg.Server.Name = resp.Name
			// The server's answer is the truth: on a conflict the
			// enrollment token's label wins over --labels.
			cfg.Server.Labels = resp.Labels
			for _, k := range slices.Sorted(maps.Keys(resp.LabelConflicts)) {
				fmt.Fprintf(cmd.ErrOrStderr(), "kiln: warning: label %s=%s of --labels refused: the enrollment token sets %s=%s\n",
					k, resp.LabelConflicts[k], k, resp.Labels[k])
			}
			if err := cfg.Save(); err != nil {
				return fmt.Errorf("save host config: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "kiln: enrolled as %s; credential written to %s\n", resp.Name, cfg.Path())
			fmt.Fprintln(cmd.OutOrStdout(), resp.Name)
			return nil
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().StringVar(&name, "name", "", "host name to enroll as (default: the machine's host name)")
	cmd.Flags().StringVar(&labels, "labels", "", "labels k=v,... (added to those of the enrollment token; where both name a key, the token's value wins)")
	return cmd
}

func newWorkerRunCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the worker daemon: lease runs, execute them in sandboxes, report",
		Long: `Run the worker daemon with the host config (--config, default
/etc/kiln/worker.toml, written by 'kiln worker enroll'). It reaps sandboxes
and clones left by a crash, then runs up to server.slots jobs at once.
SIGTERM or SIGINT drains: no new runs, running ones get server.drain_timeout
to finish, then they are cancelled and reported.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			daemonGC()
			cfg, err := loadHostConfig(g)
			if err != nil {
				return err
			}
			if cfg.Server.URL == "" || cfg.Server.Token == "" {
				return fmt.Errorf("%s has no server credential: run 'kiln worker enroll' first", cfg.Path())
			}
			ctx := cmd.Context()
			host, err := platform.Open(ctx, cfg)
			if err != nil {
				return err
			}
			defer host.Close()
			runner, err := host.Runner(ctx, "worker:"+cfg.Server.Name)
			if err != nil {
				return err
			}
			runner.AsyncTeardown = true
			defer runner.Close(context.WithoutCancel(ctx))
			w, err := worker.New(worker.Config{
				Client:        api.NewClient(cfg.Server.URL, cfg.Server.Token),
				Exec:          runner,
				Images:        hostImages{host.Images()},
				BaseFact:      baseFacts(ctx, cfg),
				HostTools:     cfg.HostTools,
				Hooks:         hookDefs(cfg),
				DiffoscopeMax: int64(cfg.Run.DiffoscopeMax),
				Slots:         cfg.Server.Slots,
				WarmPool:      cfg.Server.WarmPool,
				DataDir:       cfg.DataDir,
				Heartbeat:     cfg.Server.Heartbeat.Std(),
				DrainTimeout:  cfg.Server.DrainTimeout.Std(),
			})
			if err != nil {
				return err
			}
			return w.Run(ctx)
		},
	}
	addHostConfigFlag(cmd, g)
	return cmd
}

// baseFacts is what this host is, as the server matches jobs against it.
func baseFacts(ctx context.Context, cfg *config.Host) api.Facts {
	f := api.Facts{OS: runtime.GOOS, Arch: qemu.Native(), Labels: cfg.Server.Labels, Slots: cfg.Server.Slots,
		Details: worker.HostFacts(ctx, cfg)}
	if caps, err := qemu.Detect(ctx); err == nil {
		f.EmulatedArchs = caps.Emulated
	}
	return f
}

// hostImages adapts the image manager to what the worker needs.
type hostImages struct{ m *images.Manager }

func (h hostImages) Resolve(ctx context.Context, ref string) (string, string, error) {
	s, err := h.m.Resolve(ctx, ref)
	if err != nil {
		return "", "", err
	}
	return s.Ref(), s.Arch, nil
}

func (h hostImages) Facts(ctx context.Context) ([]api.ImageFact, error) {
	list, err := h.m.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.ImageFact, 0, len(list))
	for _, im := range list {
		f := api.ImageFact{Name: im.Name, Arch: im.Newest.Arch}
		snaps, err := h.m.Snapshots(ctx, im.Name)
		if err == nil {
			for _, s := range snaps {
				f.Versions = append(f.Versions, s.Version)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

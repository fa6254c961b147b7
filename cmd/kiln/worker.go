package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/worker"
)

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
the host name and labels (and --tls-ca, for a server whose certificate a
private CA signed) are written into the host config (--config, default
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
			facts := baseFacts(cmd.Context(), cfg, nil)
			for k, v := range lbl {
				if facts.Labels == nil {
					facts.Labels = map[string]string{}
				}
				facts.Labels[k] = v
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			if g.tlsCA != "" {
				// Kept by absolute path: the worker may run from elsewhere.
				if g.tlsCA, err = filepath.Abs(g.tlsCA); err != nil {
					return err
				}
			}
			c, err := g.newClient(g.server, g.token)
			if err != nil {
				return err
			}
			warnPlainHTTP(g.server)
			// A new key at every enroll; written only once the server
			// holds its public half.
			key, err := attest.GenerateKey()
			if err != nil {
				return err
			}
			resp, err := c.Enroll(cmd.Context(), api.EnrollRequest{Name: name, Facts: facts, SigningKey: key.PublicPEM()})
			if err != nil {
				return fmt.Errorf("enroll: %w", err)
			}
			if !api.ValidServerID(resp.ServerID) {
				// Joined into paths the worker removes: never stored.
				return fmt.Errorf("enroll: the server's identity %.80q is not 16 lowercase hex digits: refused, nothing written", resp.ServerID)
			}
			if cfg.Server.ID != "" && cfg.Server.ID != resp.ServerID {
				fmt.Fprintf(cmd.ErrOrStderr(), "kiln: this host was enrolled with another server (id %s); the worker reaps what is left of its runs on %s at its next start\n", cfg.Server.ID, cfg.DataDir)
			}
			cfg.Server.URL = strings.Join(api.Addresses(g.server), ",")
			if g.tlsCA != "" {
				cfg.Server.TLSCA = g.tlsCA
			}
			cfg.Server.Token = resp.Token
			cfg.Server.ID = resp.ServerID
			cfg.Server.Name = resp.Name
			// The server's answer is the truth: on a conflict the
			// enrollment token's label wins over --labels.
			cfg.Server.Labels = resp.Labels
			for _, k := range slices.Sorted(maps.Keys(resp.LabelConflicts)) {
				fmt.Fprintf(cmd.ErrOrStderr(), "kiln: warning: label %s=%s of --labels refused: the enrollment token sets %s=%s\n",
					k, resp.LabelConflicts[k], k, resp.Labels[k])
			}
			if err := key.WriteFile(cfg.Server.SigningKey); err != nil {
				return err
			}
			if err := cfg.Save(); err != nil {
				return fmt.Errorf("save host config: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "kiln: enrolled as %s; credential written to %s, signing key to %s\n", resp.Name, cfg.Path(), cfg.Server.SigningKey)
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
	var reapOrphans bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the worker daemon: lease runs, execute them in sandboxes, report",
		Long: `Run the worker daemon with the host config (--config, default
/etc/kiln/worker.toml, written by 'kiln worker enroll'). It reaps sandboxes
and clones left by a crash, then runs up to server.slots jobs at once.
SIGTERM or SIGINT drains: no new runs, running ones get server.drain_timeout
to finish, then they are cancelled and reported. When the server refuses the
host's credential (the host was removed, or its token revoked), the worker
drops its running jobs and exits with status 77 (EX_NOPERM): re-enroll it.

The worker holds its data dir's lock for its whole life: a second worker,
or a 'kiln exec', on the same data dir is refused and told the holder's pid.
It only ever reaps, reattaches to or lists sandboxes and clones of its own
data dir; those of another server this data dir was enrolled with before are
reaped at start. Leftovers of data dirs that no longer exist are removed by
'kiln host gc' (or --reap-orphans), never by a worker on its own.`,
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
			if cfg.Server.ID != "" && !api.ValidServerID(cfg.Server.ID) {
				return fmt.Errorf("%s: server.server_id %.80q is not 16 lowercase hex digits: re-enroll with 'kiln worker enroll'", cfg.Path(), cfg.Server.ID)
			}
			client := api.NewClient(cfg.Server.URL, cfg.Server.Token)
			if cfg.Server.TLSCA != "" {
				if err := client.TrustCA(cfg.Server.TLSCA); err != nil {
					return fmt.Errorf("%s: server.tls_ca: %w", cfg.Path(), err)
				}
			}
			warnPlainHTTP(cfg.Server.URL)
			ctx := cmd.Context()
			lock, err := platform.LockDataDir(cfg.DataDir, true, "kiln worker run")
			if err != nil {
				return err
			}
			defer lock.Release()
			host, err := platform.Open(ctx, cfg)
			if err != nil {
				return err
			}
			defer host.Close()
			// Before anything opens the host's network (the facts below,
			// host gc): its pool size is read then.
			if cfg.Network.Pool {
				host.NetworkPool = cfg.Server.Slots
			}
			if cfg.Server.ID == "" {
				// Enrolled before servers had an identity: learn it once.
				id, err := learnServerID(ctx, client, baseFacts(ctx, cfg, host))
				if err != nil {
					return fmt.Errorf("the server at %s: %w", cfg.Server.URL, err)
				}
				cfg.Server.ID = id
				if err := cfg.Save(); err != nil {
					return fmt.Errorf("save host config: %w", err)
				}
			}
			if reapOrphans {
				if err := hostGC(ctx, host, false, cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			runner, err := host.Runner(ctx, cfg.Server.ID)
			if err != nil {
				return err
			}
			runner.AsyncTeardown = true
			runner.WarmSlots = cfg.Server.Slots
			defer runner.Close(context.WithoutCancel(ctx))
			metrics := worker.NewMetrics()
			runner.Observe = metrics.ObservePhase
			if cfg.Metrics.Listen != "" {
				stop, err := serveMetrics(cfg.Metrics.Listen, metrics.Handler())
				if err != nil {
					return err
				}
				defer stop()
			}
			signer, err := loadSigningKey(cfg)
			if err != nil {
				return err
			}
			w, err := worker.New(worker.Config{
				Signer:        signer,
				HostName:      cfg.Server.Name,
				Server:        client,
				ServerID:      cfg.Server.ID,
				Exec:          runner,
				Images:        hostImages{host.Images()},
				BaseFact:      baseFacts(ctx, cfg, host),
				HostTools:     cfg.HostTools,
				Caches:        cacheDefs(cfg),
				Hooks:         hookDefs(cfg),
				Defaults:      cfg.Limits.Defaults(),
				Max:           cfg.Limits.Max(),
				DiffoscopeMax: int64(cfg.Run.DiffoscopeMax),
				InputCacheMax: int64(cfg.Run.InputCacheMax),
				Slots:         cfg.Server.Slots,
				WarmPool:      cfg.Server.WarmPool,
				DataDir:       cfg.DataDir,
				Heartbeat:     cfg.Server.Heartbeat.Std(),
				DrainTimeout:  cfg.Server.DrainTimeout.Std(),
				Metrics:       metrics,
				Fleet:         hostFleet{m: host.Images(), keep: cfg.Images.Keep},
				Builder:       hostBuilder{m: host.Images()},
			})
			if err != nil {
				return err
			}
			err = w.Run(ctx)
			if errors.Is(err, worker.ErrHostRemoved) {
				// Not a failure a restart mends: systemd's unit keeps it
				// down (RestartPreventExitStatus=77).
				return &exitError{code: exitHostRemoved, msg: err.Error()}
			}
			return err
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().BoolVar(&reapOrphans, "reap-orphans", false, "first remove leftovers of data dirs that no longer exist (as 'kiln host gc')")
	return cmd
}

// serveMetrics answers GET /metrics on addr until stop is called. The
// listener is opened here so that a taken or bad address fails the start.
func serveMetrics(addr string, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("[metrics] listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics listener", "err", err)
		}
	}()
	slog.Info("serving metrics", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

// exitHostRemoved is `kiln worker run`'s exit status when the server
// refused the host's credential: EX_NOPERM of sysexits.h.
const exitHostRemoved = 77

// warnPlainHTTP warns that the worker's credential would cross a network
// in clear text.
func warnPlainHTTP(url string) {
	if api.PlainHTTPRemote(url) {
		slog.Warn("the server URL is plain HTTP to a host other than this one: the worker's token crosses the network in clear text; use https (tls_cert and tls_key on the server, tls_ca here for a private CA)", "url", url)
	}
}

// baseFacts is what this host is, as the server matches jobs against it.
// host is the worker's open host, or nil outside a worker (see
// worker.HostFacts).
func baseFacts(ctx context.Context, cfg *config.Host, host *platform.Host) api.Facts {
	f := api.Facts{OS: runtime.GOOS, Arch: qemu.Native(), Labels: cfg.Server.Labels, Slots: cfg.Server.Slots,
		Details: worker.HostFacts(ctx, cfg, host), Limits: cfg.Limits.Max()}
	f.Isolations = worker.Isolations(f.Details)
	if caps, err := qemu.Detect(ctx); err == nil {
		f.EmulatedArchs = caps.Emulated
	}
	f.Networks, _ = platform.Networks(cfg)
	if runtime.GOOS == "linux" {
		// Caches are overlays; a FreeBSD host refuses runs naming one, so
		// it must not be offered them.
		for name := range cfg.Caches {
			f.Caches = append(f.Caches, name)
		}
	}
	slices.Sort(f.Caches)
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

// Hold keeps image changers out of the image named in ref.
func (h hostImages) Hold(ref string) func() {
	name, _, _ := strings.Cut(ref, "@")
	return h.m.Hold(name)
}

func (h hostImages) Facts(ctx context.Context) ([]api.ImageFact, error) {
	list, err := h.m.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.ImageFact, 0, len(list))
	for _, im := range list {
		if images.IsFleet(im.Name) {
			continue // reported as Facts.FleetImages, by digest
		}
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

// learnServerID asks the server for its identity with a heartbeat, for a
// host enrolled before servers had one. An id of another shape than the
// scheduler makes is refused: the worker joins it into paths it removes.
func learnServerID(ctx context.Context, c *api.Client, facts api.Facts) (string, error) {
	hb, err := c.Heartbeat(ctx, api.HeartbeatRequest{Facts: facts})
	if err != nil {
		return "", fmt.Errorf("learn the server's identity: %w", err)
	}
	switch {
	case hb.ServerID == "":
		return "", errors.New("the server reports no identity (upgrade it)")
	case !api.ValidServerID(hb.ServerID):
		return "", fmt.Errorf("the server reports the identity %.80q, not 16 lowercase hex digits: refused", hb.ServerID)
	}
	return hb.ServerID, nil
}

// loadSigningKey loads the host's provenance key; a host enrolled before
// hosts had keys has none and signs nothing (re-enroll to get one).
func loadSigningKey(cfg *config.Host) (*attest.Signer, error) {
	s, err := attest.LoadKeyFile(cfg.Server.SigningKey)
	if errors.Is(err, fs.ErrNotExist) {
		slog.Warn("no signing key: runs are reported without provenance; re-enroll this host to make one", "path", cfg.Server.SigningKey)
		return nil, nil
	}
	return s, err
}

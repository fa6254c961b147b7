package main

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/scheduler"
)

func init() { register(newServerCmd) }

func newServerCmd(g *globals) *cobra.Command {
	var cfgPath, listen, dataDir string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the central queue (HTTP API, SQLite store, blobs)",
		Long: `Run the kiln server: the job queue, its HTTP/JSON API under /v1, /healthz,
Prometheus /metrics, and the web view at / (runs, consoles, artifacts, jobs,
groups, hosts; [ui] public = true serves it without a login). State (SQLite
database, blobs) lives in --data-dir. On first start an admin token is written
to <data-dir>/admin.token (mode 0600); use it as --token / KILN_TOKEN (and to
log in to the web view). TLS is used when the config names tls_cert and
tls_key. Every setting and its default is in contrib/server.toml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			daemonGC()
			path, explicit := config.DefaultServerConfigPath, false
			if cmd.Flags().Changed("config") {
				path, explicit = cfgPath, true
			}
			cfg, err := config.LoadServer(path, explicit)
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if dataDir != "" {
				cfg.DataDir = dataDir
			}
			ctx := cmd.Context()
			srv, err := scheduler.New(ctx, cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			slog.Info("kiln server listening", "addr", ln.Addr().String(), "tls", cfg.TLSCert != "", "data_dir", cfg.DataDir)
			return srv.Serve(ctx, ln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", config.DefaultServerConfigPath, "server config file (TOML)")
	f.StringVar(&listen, "listen", "", "address to listen on (default from config: 127.0.0.1:8420)")
	f.StringVar(&dataDir, "data-dir", "", "state directory (default from config: /var/lib/kiln/server)")
	return cmd
}

package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/scheduler"
)

func init() { register(newServerCmd) }

func newServerCmd(g *globals) *cobra.Command {
	var cfgPath, listen, dataDir, storeURL string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the central queue (HTTP API, SQLite or PostgreSQL store, blobs)",
		Long: `Run the kiln server: the job queue, its HTTP/JSON API under /v1, /healthz
and Prometheus /metrics. State (SQLite database, blobs) lives in --data-dir.
With --store postgres://... (or [store] url) the queue lives in PostgreSQL
instead, and several servers given the same URL and a shared --data-dir
(blobs) serve one farm as replicas (docs/replicas.md).
On first start an admin token is written to <data-dir>/admin.token (mode 0600);
use it as --token / KILN_TOKEN. TLS is used when the config names tls_cert and
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
			if storeURL != "" {
				cfg.Store.URL = storeURL
				if err := cfg.Validate(); err != nil {
					return err
				}
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
			slog.Info("kiln server listening", "addr", ln.Addr().String(), "tls", cfg.TLSCert != "", "data_dir", cfg.DataDir, "store", storeName(cfg))
			return srv.Serve(ctx, ln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", config.DefaultServerConfigPath, "server config file (TOML)")
	f.StringVar(&listen, "listen", "", "address to listen on (default from config: 127.0.0.1:8420)")
	f.StringVar(&dataDir, "data-dir", "", "state directory (default from config: /var/lib/kiln/server)")
	f.StringVar(&storeURL, "store", "", "PostgreSQL URL postgres://... of the queue (default from config [store] url; none: SQLite in the data dir)")
	return cmd
}

// storeName says which database the server runs on, without a password.
func storeName(cfg *config.Server) string {
	if !cfg.Postgres() {
		return "sqlite"
	}
	u, err := url.Parse(cfg.Store.URL)
	if err != nil {
		return "postgres"
	}
	return u.Redacted()
}

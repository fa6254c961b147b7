package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/scheduler"
)

func newServerCmd(g *globals) *cobra.Command {
	var cfgPath, listen, dataDir, storeURL string
	var insecureHTTP bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the central queue (HTTP API, SQLite or PostgreSQL store, blobs)",
		Long: `Run the kiln server: the job queue, its HTTP/JSON API under /v1, /healthz,
Prometheus /metrics, and the web view at / (runs, consoles, artifacts, jobs,
groups, hosts; [ui] public = true serves it without a login). State (SQLite
database, blobs) lives in --data-dir. With --store postgres://... (or [store]
url) the queue lives in PostgreSQL instead, and several servers given the
same URL and a shared --data-dir (blobs) serve one farm as replicas
(docs/replicas.md). On first start an admin token is written to
<data-dir>/admin.token (mode 0600); use it as --token / KILN_TOKEN (and to
log in to the web view). TLS is used when the config names tls_cert and
tls_key. Without TLS the server listens only on the loopback (127.0.0.1, ::1,
localhost) unless --insecure-http is given: workers send their credentials in
every request. Every setting and its default is in contrib/server.toml.`,
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
			if err := checkListen(cfg.Listen, cfg.TLSCert != "", insecureHTTP); err != nil {
				return err
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
	cmd.AddCommand(newServerGCCmd(g))
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", config.DefaultServerConfigPath, "server config file (TOML)")
	f.StringVar(&listen, "listen", "", "address to listen on (default from config: 127.0.0.1:8420)")
	f.StringVar(&dataDir, "data-dir", "", "state directory (default from config: /var/lib/kiln/server)")
	f.StringVar(&storeURL, "store", "", "PostgreSQL URL postgres://... of the queue (default from config [store] url; none: SQLite in the data dir)")
	f.BoolVar(&insecureHTTP, "insecure-http", false, "serve plain HTTP on a non-loopback address (tokens cross the network in clear text)")
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

// checkListen refuses plain HTTP on an address other hosts can reach,
// unless the admin said so: every request carries a bearer token.
func checkListen(listen string, tls, insecureHTTP bool) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen %q: %w", listen, err)
	}
	switch {
	case tls || api.LoopbackHost(host):
		return nil
	case insecureHTTP:
		slog.Warn("serving plain HTTP on a non-loopback address: tokens cross the network in clear text", "listen", listen)
		return nil
	}
	return fmt.Errorf("listen %s: plain HTTP off the loopback would send every token in clear text; "+
		"set tls_cert and tls_key in the server config, or pass --insecure-http to accept that", listen)
}

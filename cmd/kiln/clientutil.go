package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kiln-build/kiln/api"
)

// client builds the API client from --server/--token (or KILN_SERVER,
// KILN_TOKEN).
func (g *globals) client() (*api.Client, error) {
	if g.server == "" {
		return nil, errors.New("no server: pass --server URL or set KILN_SERVER")
	}
	if g.token == "" {
		return nil, errors.New("no token: pass --token T or set KILN_TOKEN (the admin token is in <data-dir>/admin.token; an admin makes client tokens with 'kiln token create --name N')")
	}
	srv := g.server
	if !strings.Contains(srv, "://") {
		srv = "http://" + srv
	}
	return g.newClient(srv, g.token)
}

// newClient is a client of url that trusts --tls-ca besides the system's
// roots.
func (g *globals) newClient(url, token string) (*api.Client, error) {
	c := api.NewClient(url, token)
	if g.tlsCA != "" {
		if err := c.TrustCA(g.tlsCA); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// printList writes v as JSON with --output json, else calls table with a
// tab-aligned writer.
func (g *globals) printList(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "", "text":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return fmt.Errorf("--output %q: want json or nothing", g.output)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// parseLabels reads "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

// newHostKeysCmd builds `kiln host keys`.
func newHostKeysCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "keys",
		Short: "Export every host's provenance signing key (JSON), for 'kiln artifact verify --keys'",
		Long: `Print the provenance signing keys of every host the server knows as a JSON
array: host, key_id, public_key (PEM), created and, for the key of a removed
host, revoked (runs that finished before it still verify). Save it and pass
it to 'kiln artifact verify --keys FILE' to verify offline.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			keys, err := c.HostKeys(cmd.Context())
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(keys)
		},
	}
}

// newArtifactVerifyCmd builds `kiln artifact verify`.
func newArtifactVerifyCmd(g *globals) *cobra.Command {
	var run, group, attFile, keysFile string
	var quorum int
	cmd := &cobra.Command{
		Use:   "verify FILE... (--attestation FILE | --run ID | --group ID) [--quorum N] [--keys FILE]",
		Short: "Check files against signed provenance: digests, host signatures, and how many hosts vouch",
		Long: `Check that each FILE is a subject of signed provenance (in-toto Statement v1,
SLSA Provenance v1, in DSSE envelopes; docs/publishing.md) from at least
--quorum distinct hosts, each signature made by a host key that was not
revoked when its run finished. Prints which hosts vouched for each file.

The envelopes come from --attestation FILE (saved from GET
/v1/runs/{id}/attestation or /v1/groups/{id}/attestation), or are fetched
from the server with --run or --group. The host keys come from --keys FILE
(saved from 'kiln host keys'), or from the server (admin). With both files
given nothing is asked of a server.

Any envelope that does not verify (a changed statement, a signature by an
unknown or revoked key), a file no envelope names (a changed byte), or too
few distinct hosts fails the command, naming what failed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if n := btoi(attFile != "") + btoi(run != "") + btoi(group != ""); n != 1 {
				return errors.New("give exactly one of --attestation FILE, --run ID, --group ID")
			}
			var client *api.Client
			lazyClient := func() (*api.Client, error) {
				var err error
				if client == nil {
					client, err = g.client()
				}
				return client, err
			}
			var attData []byte
			var err error
			switch {
			case attFile != "":
				attData, err = os.ReadFile(attFile)
			case run != "":
				var c *api.Client
				if c, err = lazyClient(); err == nil {
					attData, err = c.RunAttestation(ctx, run)
				}
			default:
				var c *api.Client
				if c, err = lazyClient(); err == nil {
					attData, err = c.GroupAttestation(ctx, group)
				}
			}
			if err != nil {
				return fmt.Errorf("attestation: %w", err)
			}
			envs, err := attest.ReadEnvelopes(attData)
			if err != nil {
				return err
			}
			var hostKeys []api.HostKey
			if keysFile != "" {
				b, err := os.ReadFile(keysFile)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(b, &hostKeys); err != nil {
					return fmt.Errorf("%s: %w", keysFile, err)
				}
			} else {
				c, err := lazyClient()
				if err != nil {
					return fmt.Errorf("host keys (or pass --keys FILE): %w", err)
				}
				if hostKeys, err = c.HostKeys(ctx); err != nil {
					return fmt.Errorf("host keys: %w", err)
				}
			}
			keys, err := attest.NewKeySet(hostKeys)
			if err != nil {
				return err
			}
			files := make([]attest.File, 0, len(args))
			for _, a := range args {
				sum, err := fileSHA256(a)
				if err != nil {
					return err
				}
				files = append(files, attest.File{Name: a, SHA256: sum})
			}
			res, verr := attest.Verify(ctx, files, envs, keys, quorum)
			for _, r := range res {
				if len(r.Hosts) >= max(quorum, 1) {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: ok, vouched for by %s (as %s)\n", r.File.Name, strings.Join(r.Hosts, ", "), strings.Join(r.Subjects, ", "))
				}
			}
			return verr
		},
	}
	cmd.Flags().StringVar(&attFile, "attestation", "", "envelope(s) saved from the attestation endpoints")
	cmd.Flags().StringVar(&run, "run", "", "fetch the attestation of this run from the server")
	cmd.Flags().StringVar(&group, "group", "", "fetch the attestation of this reproducible group from the server")
	cmd.Flags().StringVar(&keysFile, "keys", "", "host keys saved from 'kiln host keys' (default: ask the server)")
	cmd.Flags().IntVar(&quorum, "quorum", 1, "distinct hosts that must vouch for each file")
	return cmd
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

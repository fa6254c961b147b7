package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/platform"
)

func newImagePublishCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "publish NAME[@VERSION] [--config worker.toml]",
		Short: "Upload one of this host's images to the server, for every host of the fleet",
		Long: `Packs the snapshot NAME@VERSION of this host (the newest of NAME without
@VERSION) as a deterministic, zstd-compressed root-filesystem tar
(docs/images.md), uploads it to the server's blob store (an interrupted
upload resumes when the command is run again) and records it as the next
version of the server-held image NAME, with its arch, os, method and recipe.
Prints the server's NAME@N. Runs of jobs naming NAME are then pinned to that
version, and hosts that lack it fetch it. Needs an admin token.`,
		Example: `  kiln image publish bookworm --server https://kiln.example:8420 --token $ADMIN
  kiln image publish bookworm@20261121T120000Z --config /etc/kiln/worker.toml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := g.client()
			if err != nil {
				return err
			}
			return withHost(cmd.Context(), g, func(h *platform.Host) error {
				v, err := publishImage(cmd, h, client, args[0], quiet)
				if err != nil {
					return fmt.Errorf("image publish %s: %w", args[0], err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), v.Ref())
				return nil
			})
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

// publishImage packs ref into a file of the data dir (kept while the
// upload may resume), uploads it and records the version.
func publishImage(cmd *cobra.Command, h *platform.Host, client *api.Client, ref string, quiet bool) (*api.ImageVersion, error) {
	ctx := cmd.Context()
	m := h.Images()
	s, err := m.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	if images.IsFleet(s.Name) {
		return nil, fmt.Errorf("%s is this host's copy of a server-held image: %w", s.Name, errdefs.ErrInvalid)
	}
	dir := filepath.Join(h.Config.DataDir, "images", "publish")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, s.Name+"-*.tar.zst")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	stderr := cmd.ErrOrStderr()
	packBar := newByteBar(stderr, quiet, "pack "+s.Ref(), s.Size)
	hash := sha256.New()
	snap, st, err := m.PackSnapshot(ctx, s.Ref(), io.MultiWriter(f, hash), images.PackOptions{Progress: packBar.set})
	packBar.done()
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	blob := hex.EncodeToString(hash.Sum(nil))
	upBar := newByteBar(stderr, quiet, "upload", fi.Size())
	err = client.UploadBlob(ctx, blob, &readerAtProgress{r: f, bar: upBar}, fi.Size())
	upBar.done()
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	v, err := client.PublishImage(ctx, api.PublishImageRequest{Version: api.ImageVersion{
		Name: snap.Name, Arch: snap.Arch, OS: snap.OS, Method: snap.Method, Recipe: snap.Recipe(),
		TarDigest: st.TarDigest, TarSize: st.TarSize, Blob: blob, BlobSize: fi.Size(),
	}})
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("the server keeps no images (upgrade it): %w", err)
	}
	return v, err
}

package main

import (
	"context"
	"io"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/worker"
)

// hostFleet keeps the server-held image versions of a worker's runs in the
// host's image store (images/fleet.go), keep versions of each.
type hostFleet struct {
	m    *images.Manager
	keep int
}

var _ worker.FleetImages = hostFleet{}

// fleetVersion is the part of a server's manifest the host keeps.
func fleetVersion(v api.ImageVersion) images.FleetVersion {
	return images.FleetVersion{Name: v.Name, Version: v.Version, Arch: v.Arch, OS: v.OS,
		Method: v.Method, Recipe: v.Recipe, TarDigest: v.TarDigest, TarSize: v.TarSize}
}

func (h hostFleet) Find(ctx context.Context, v api.ImageVersion) (string, bool, error) {
	s, ok, err := h.m.FindFleet(ctx, fleetVersion(v))
	return s.Ref(), ok, err
}

func (h hostFleet) Import(ctx context.Context, v api.ImageVersion, r io.Reader) (string, error) {
	s, _, err := h.m.ImportFleet(ctx, fleetVersion(v), r, images.ImportOptions{})
	if err != nil {
		return "", err
	}
	return s.Ref(), nil
}

func (h hostFleet) Prune(ctx context.Context, name string, protect func(string) bool) error {
	return h.m.PruneFleet(ctx, name, h.keep, func(s images.Snapshot) bool { return protect(s.TarDigest) })
}

func (h hostFleet) Digests(ctx context.Context) ([]string, error) {
	snaps, err := h.m.FleetSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, s.TarDigest)
	}
	return out, nil
}

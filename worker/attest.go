package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

// attest signs the provenance of a run that succeeded with artifacts
// (docs/publishing.md) and returns its DSSE envelope for the result; nil
// when there is nothing to sign or no key. A failed signature is logged
// and the result goes without one: the run itself is fine, and its
// artifacts are simply not vouched for by this host.
//
// Only a host that has a key sends one, and it got its key at an enroll
// the server accepted with the key in it: that server takes the field.
func (w *Worker) attest(ctx context.Context, a *api.Assignment, req *api.ResultRequest, started time.Time, log *slog.Logger) json.RawMessage {
	if w.cfg.Signer == nil || len(req.Artifacts) == 0 || req.Error != "" || req.ExitCode != 0 || req.Signal != "" || req.TimedOut {
		return nil
	}
	// The snapshot's own arch (an image may be of an emulated arch).
	arch := w.cfg.BaseFact.Arch
	if _, ar, err := w.cfg.Images.Resolve(ctx, req.Snapshot); err == nil && ar != "" {
		arch = ar
	}
	run := &attest.Run{
		ServerID:   w.cfg.ServerID,
		RunID:      a.RunID,
		Attempt:    a.Attempt,
		Host:       w.cfg.HostName,
		Version:    w.cfg.BaseFact.Version,
		Job:        a.Job,
		Revision:   a.Revision,
		Snapshot:   req.Snapshot,
		Arch:       arch,
		Isolation:  a.Job.Isolation,
		Variations: a.Variations,
		Group:      a.Group,
		Member:     a.Member,
		HostFacts:  w.cfg.BaseFact.Details,
		Started:    started,
		Finished:   time.Now(),
		Artifacts:  req.Artifacts,
	}
	if a.Image != nil {
		// Pinned to a server-held image version: its tar digest names
		// the tree the run started from.
		run.Image, run.ImageDigest = a.Image.Ref(), a.Image.TarDigest
	}
	st, err := attest.Statement(run)
	if err == nil {
		var env any
		if env, err = attest.Sign(ctx, w.cfg.Signer, st); err == nil {
			var b []byte
			if b, err = json.Marshal(env); err == nil {
				return b
			}
		}
	}
	log.Error("signing the run's provenance; reporting it unsigned", "err", err)
	return nil
}

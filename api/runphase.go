package api

import (
	"context"
	"net/url"
)

// Run phases a worker reports with SetRunPhase (docs/images-server.md).
const (
	// PhaseFetchingImage: the host is fetching the run's server-held
	// image version (Assignment.Image) before it can start the run; the
	// run's page says "fetching image NAME@VERSION (SIZE)".
	PhaseFetchingImage = "fetching-image"
	// PhaseNone clears the phase: the run's script is about to start.
	PhaseNone = ""
)

// RunPhaseRequest is the body of POST /v1/worker/runs/{id}/phase.
// Done and Rate report a fetch's progress (bytes of the image's blob
// received, bytes per second): the run's page then says how far it is
// and how long is left. Zero: not known yet.
type RunPhaseRequest struct {
	Phase string `json:"phase"`
	Done  int64  `json:"done,omitempty"`
	Rate  int64  `json:"rate,omitempty"`
}

// SetRunPhase tells the server what the host holding run runID's lease
// with fence is doing before the run's script starts (one of the Phase
// constants): `kiln run info` and the web view show it. A lease the host
// no longer holds is ErrStaleFence.
func (c *Client) SetRunPhase(ctx context.Context, runID, fence, phase string) error {
	return c.SetRunProgress(ctx, runID, fence, RunPhaseRequest{Phase: phase})
}

// SetRunProgress is SetRunPhase with a fetch's progress (Done, Rate).
func (c *Client) SetRunProgress(ctx context.Context, runID, fence string, req RunPhaseRequest) error {
	q := url.Values{"fence": {fence}}
	_, err := c.do(ctx, "POST", "/v1/worker/runs/"+esc(runID)+"/phase", q, req, nil)
	return err
}

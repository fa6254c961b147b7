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
type RunPhaseRequest struct {
	Phase string `json:"phase"`
}

// SetRunPhase tells the server what the host holding run runID's lease
// with fence is doing before the run's script starts (one of the Phase
// constants): `kiln run info` and the web view show it. A lease the host
// no longer holds is ErrStaleFence.
func (c *Client) SetRunPhase(ctx context.Context, runID, fence, phase string) error {
	q := url.Values{"fence": {fence}}
	_, err := c.do(ctx, "POST", "/v1/worker/runs/"+esc(runID)+"/phase", q, RunPhaseRequest{Phase: phase}, nil)
	return err
}

package api

import (
	"context"
	"encoding/json"
)

// HostKeys lists every host signing key the server knows, revoked ones
// included (admin).
func (c *Client) HostKeys(ctx context.Context) ([]HostKey, error) {
	var out []HostKey
	_, err := c.do(ctx, "GET", "/v1/hosts/keys", nil, nil, &out)
	return out, err
}

// RunAttestation is run id's DSSE envelope, as the worker sent it.
func (c *Client) RunAttestation(ctx context.Context, id string) (json.RawMessage, error) {
	var out json.RawMessage
	_, err := c.do(ctx, "GET", "/v1/runs/"+esc(id)+"/attestation", nil, nil, &out)
	return out, err
}

// GroupAttestation is a reproducible group's attestation (a
// GroupAttestation as JSON).
func (c *Client) GroupAttestation(ctx context.Context, id string) (json.RawMessage, error) {
	var out json.RawMessage
	_, err := c.do(ctx, "GET", "/v1/groups/"+esc(id)+"/attestation", nil, nil, &out)
	return out, err
}

package api

import (
	"context"
	"net/url"
)

// ExecuteJobWith queues a run of the job's current revision, or a
// reproduce group when req.Reproduce (or the job's reproduce) is at least
// 2; then the answer is the group's first member with Run.Group set.
func (c *Client) ExecuteJobWith(ctx context.Context, name string, req ExecuteRequest) (*Run, error) {
	var out Run
	_, err := c.do(ctx, "POST", "/v1/jobs/"+esc(name)+"/runs", nil, req, &out)
	return &out, err
}

// GetGroup returns a reproduce group with its members and, once all ended,
// its verdict.
func (c *Client) GetGroup(ctx context.Context, id string) (*Group, error) {
	var out Group
	_, err := c.do(ctx, "GET", "/v1/groups/"+esc(id), nil, nil, &out)
	return &out, err
}

// ListGroupRuns lists the members of group id, newest first.
func (c *Client) ListGroupRuns(ctx context.Context, id string, limit int) ([]Run, error) {
	q := url.Values{"group": {id}}
	var out []Run
	_, err := c.do(ctx, "GET", "/v1/runs", q, nil, &out)
	return out, err
}

// FindArtifacts returns every stored run file whose content has sha256,
// newest run first.
func (c *Client) FindArtifacts(ctx context.Context, sha256 string) ([]ArtifactRef, error) {
	var out []ArtifactRef
	_, err := c.do(ctx, "GET", "/v1/artifacts", url.Values{"sha256": {sha256}}, nil, &out)
	return out, err
}

package api

import (
	"context"
	"time"
)

// ClientTokenRequest asks for a named client token (POST /v1/tokens).
type ClientTokenRequest struct {
	Name string   `json:"name"`          // a job-style name, unique among client tokens
	TTL  Duration `json:"ttl,omitempty"` // 0: it never expires
	// Group (a job-style name) makes the token share jobs with the other
	// tokens of that group: the group owns the jobs any of them adds.
	// Without a group the token owns its jobs alone.
	Group string `json:"group,omitempty"`
}

// ClientToken is a new client token, shown once: the server keeps only
// its hash.
type ClientToken struct {
	Token   string    `json:"token"`
	Name    string    `json:"name"`
	Group   string    `json:"group,omitempty"`
	Expires time.Time `json:"expires,omitzero"` // zero: never
}

// ClientTokenInfo describes a stored client token, never the token itself.
type ClientTokenInfo struct {
	Name    string    `json:"name"`
	Group   string    `json:"group,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: never
	Expired bool      `json:"expired,omitempty"`
	// LastUsed is the last request made with it, recorded at most once a
	// minute; zero: never used.
	LastUsed time.Time `json:"last_used,omitzero"`
}

// CreateClientToken makes a client token (admin token only). The caller
// must keep ClientToken.Token; it is shown only once.
func (c *Client) CreateClientToken(ctx context.Context, req ClientTokenRequest) (*ClientToken, error) {
	var out ClientToken
	_, err := c.do(ctx, "POST", "/v1/tokens", nil, req, &out)
	return &out, err
}

// ListClientTokens lists the client tokens by name (admin token only).
func (c *Client) ListClientTokens(ctx context.Context) ([]ClientTokenInfo, error) {
	var out []ClientTokenInfo
	_, err := c.do(ctx, "GET", "/v1/tokens", nil, nil, &out)
	return out, err
}

// RevokeClientToken deletes the named client token; requests made with it
// are refused from then on (admin token only). ErrNotFound: no such token.
func (c *Client) RevokeClientToken(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/v1/tokens/"+esc(name), nil, nil, nil)
	return err
}

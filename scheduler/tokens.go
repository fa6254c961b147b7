package scheduler

import (
	"context"
	"database/sql"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// lastUsedEvery bounds how often a client token's last use is written:
// once per token per interval, not once per request.
const lastUsedEvery = time.Minute

// noteClientUse records that p's token was used now, unless that was
// recorded less than lastUsedEvery ago. A failure is logged, never
// refuses the request.
func (s *Server) noteClientUse(ctx context.Context, p *principal) {
	now := s.now().UnixNano()
	last := p.lastUsed.Load()
	if now-last < int64(lastUsedEvery) || !p.lastUsed.CompareAndSwap(last, now) {
		return
	}
	if err := s.st.touchClientToken(ctx, p.hash, now); err != nil && ctx.Err() == nil {
		s.log.Warn("record client token use", "name", p.name, "err", err)
	}
}

func (s *Server) createClientToken(ctx context.Context, req *api.ClientTokenRequest) (*api.ClientToken, error) {
	if !names.Valid(req.Name) {
		return nil, badRequest("token name %q is not valid", req.Name)
	}
	if req.Group != "" && !names.Valid(req.Group) {
		return nil, badRequest("group name %q is not valid", req.Group)
	}
	if req.TTL < 0 {
		return nil, badRequest("ttl %v: want a positive duration, or none for no expiry", time.Duration(req.TTL))
	}
	tok := newToken("kiln_client_")
	now := s.now()
	out := &api.ClientToken{Token: tok, Name: req.Name, Group: req.Group}
	var group sql.NullString
	if req.Group != "" {
		group = sql.NullString{String: req.Group, Valid: true}
	}
	var expires sql.NullInt64
	if req.TTL > 0 {
		out.Expires = now.Add(time.Duration(req.TTL)).UTC()
		expires = sql.NullInt64{Int64: ns(out.Expires), Valid: true}
	}
	if err := s.st.addClientToken(ctx, hashToken(tok), req.Name, group, expires, now); err != nil {
		return nil, err
	}
	s.log.Info("client token created", "name", req.Name, "group", req.Group, "expires", out.Expires)
	return out, nil
}

func (s *Server) listClientTokens(ctx context.Context) ([]api.ClientTokenInfo, error) {
	return s.st.clientTokens(ctx, s.now())
}

// revokeClientToken deletes the token and clears the auth cache of every
// replica (authChanged), so that the next request with it is refused.
func (s *Server) revokeClientToken(ctx context.Context, name string) error {
	err := s.st.revokeClientToken(ctx, name)
	s.auth.clear()
	if err != nil {
		return err
	}
	s.log.Info("client token revoked", "name", name)
	return nil
}

func (s *Server) hCreateClientToken(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.ClientTokenRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	t, err := s.createClientToken(r.Context(), &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, t)
}

func (s *Server) hListClientTokens(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ts, err := s.listClientTokens(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ts)
}

func (s *Server) hRevokeClientToken(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if err := s.revokeClientToken(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// Incoming webhooks (docs/webhooks.md): a forge POSTs to
// /v1/webhooks/{name} with no token; the hook's secret is the
// credential. A verified push queues the hook's job as the token that
// made the hook, through the same owner rules as an execute, with the
// event in the run's environment; its delivery id is kept so that a
// replay queues nothing.

// Bounds of a webhook secret (bytes).
const (
	minWebhookSecret = 16
	maxWebhookSecret = 512
)

// webhooks is the server's state for incoming hooks.
type webhooks struct {
	box        *secretBox
	deliveries *prometheus.CounterVec
}

func (s *Server) initWebhooks() {
	s.hooks = &webhooks{
		box: newSecretBox(s.dataDir),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_webhook_deliveries_total",
			Help: "Requests to POST /v1/webhooks/{name}, by result: accepted (runs queued), duplicate (a replayed delivery id), ignored (an event that runs nothing), unauthorized (no or a wrong signature: 401), too_large (413), bad_request, unknown_hook, refused (the owner's token is gone or its queue is full).",
		}, []string{"result"}),
	}
	s.metrics.reg.MustRegister(s.hooks.deliveries)
}

// withRunEnv puts a webhook run's variables (JSON) into a's job, over the
// job's own env. The job is a copy, but its env map is the stored spec's.
func withRunEnv(a *api.Assignment, envJSON string) error {
	var env map[string]string
	if err := json.Unmarshal([]byte(envJSON), &env); err != nil {
		return err
	}
	merged := maps.Clone(a.Job.Env)
	if merged == nil {
		merged = map[string]string{}
	}
	maps.Copy(merged, env)
	a.Job.Env = merged
	return nil
}

// createWebhook stores a hook for p; the answer carries the secret only
// when the server chose it.
func (s *Server) createWebhook(ctx context.Context, p *principal, req *api.WebhookRequest) (*api.Webhook, error) {
	if req.Format == "" {
		req.Format = api.WebhookGitHub
	}
	switch {
	case !names.Valid(req.Name):
		return nil, badRequest("webhook name %q: want 1 to 63 of letters, digits, '.', '_', '-', starting with a letter or digit", req.Name)
	case !slices.Contains(api.WebhookFormats, req.Format):
		return nil, badRequest("webhook format %q: want one of %v", req.Format, api.WebhookFormats)
	}
	chosen := ""
	if req.Secret == "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		chosen = base64.RawURLEncoding.EncodeToString(b)
		req.Secret = chosen
	}
	if n := len(req.Secret); n < minWebhookSecret || n > maxWebhookSecret {
		return nil, badRequest("webhook secret: want %d to %d bytes, have %d", minWebhookSecret, maxWebhookSecret, n)
	}
	if err := checkEnvValue(req.Secret); err != nil {
		return nil, badRequest("webhook secret: %v", err)
	}
	sealed, err := s.hooks.box.seal(req.Name, []byte(req.Secret))
	if err != nil {
		return nil, err
	}
	h := &storedHook{name: req.Name, job: req.Job, format: req.Format, secret: sealed, owner: p.owner(), tokenHash: p.hash, created: s.now()}
	if err := s.st.addWebhook(ctx, p, h); err != nil {
		return nil, err
	}
	s.log.Info("webhook created", "name", h.name, "job", h.job, "format", h.format, "owner", h.owner)
	w := h.info()
	w.Secret = chosen
	return &w, nil
}

func (s *Server) hCreateWebhook(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.WebhookRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	hook, err := s.createWebhook(r.Context(), p, &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, hook)
}

func (s *Server) hListWebhooks(w http.ResponseWriter, r *http.Request, p *principal) error {
	hooks, err := s.st.webhooks(r.Context(), p.ownerFilter())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, hooks)
}

func (s *Server) hRemoveWebhook(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.st.removeWebhook(r.Context(), p, r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// hDeliver answers a delivery: 202 with the run it queued, 200 for a
// replay (with the first delivery's run) or an ignored event, 401 for a
// missing or wrong signature, 413 for a body over webhook_max_body.
func (s *Server) hDeliver(w http.ResponseWriter, r *http.Request) {
	status, out, err := s.deliverWebhook(r.Context(), r)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			s.countDelivery(ae.status)
		}
		s.writeError(w, r, err)
		return
	}
	_ = writeJSON(w, status, out)
}

func (s *Server) countDelivery(status int) {
	result := "refused"
	switch status {
	case http.StatusUnauthorized:
		result = "unauthorized"
	case http.StatusRequestEntityTooLarge:
		result = "too_large"
	case http.StatusBadRequest:
		result = "bad_request"
	case http.StatusNotFound:
		result = "unknown_hook"
	}
	s.hooks.deliveries.WithLabelValues(result).Inc()
}

func (s *Server) deliverWebhook(ctx context.Context, r *http.Request) (int, *api.WebhookDelivery, error) {
	name := r.PathValue("name")
	h, err := s.st.webhook(ctx, name)
	if err != nil {
		return 0, nil, err
	}
	if h == nil {
		return 0, nil, notFound("no webhook %q", name)
	}
	limit := int64(s.cfg.WebhookMaxBody)
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return 0, nil, err
	}
	if int64(len(body)) > limit {
		return 0, nil, errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "webhook body exceeds %d bytes (webhook_max_body)", limit)
	}
	secret, err := s.hooks.box.open(h.name, h.secret)
	if err != nil {
		return 0, nil, err
	}
	if err := verifyDelivery(h.format, secret, r.Header, body); err != nil {
		s.log.Warn("webhook delivery refused", "hook", h.name, "remote", r.RemoteAddr, "err", err)
		if cerr := s.st.refuseWebhook(ctx, h.name); cerr != nil {
			s.log.Warn("counting a refused webhook delivery", "hook", h.name, "err", cerr)
		}
		return 0, nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "webhook %s: %v", h.name, err)
	}
	ev, err := parseDelivery(h.format, r.Header, body)
	if err != nil {
		return 0, nil, badRequest("webhook %s: %v", h.name, err)
	}
	if ev.ignored != "" {
		s.hooks.deliveries.WithLabelValues("ignored").Inc()
		return http.StatusOK, &api.WebhookDelivery{Ignored: ev.ignored}, nil
	}
	// The run is the owner's who made the hook, as long as its token
	// is valid: a revoked or expired token's hooks run nothing.
	p, err := s.lookupToken(ctx, h.tokenHash)
	if err == nil && p.kind == kindClient && p.expires != 0 && s.now().UnixNano() > p.expires {
		err = errors.New("expired")
	}
	if err != nil {
		return 0, nil, errorf(http.StatusForbidden, api.CodeForbidden, "webhook %s: the token that made it is no longer valid (%v); make the hook again", h.name, err)
	}
	env, _ := json.Marshal(ev.env(h.name))
	now := s.now()
	q, dup, err := s.st.deliver(ctx, p, hookDelivery{hook: h.name, job: h.job, delivery: ev.delivery, env: string(env), now: now, maxQueued: s.maxQueued})
	if err != nil {
		return 0, nil, err
	}
	if dup != 0 {
		s.hooks.deliveries.WithLabelValues("duplicate").Inc()
		s.log.Info("webhook delivery replayed; nothing queued", "hook", h.name, "delivery", ev.delivery, "run", dup)
		return http.StatusOK, &api.WebhookDelivery{Run: itoa(dup), Duplicate: true}, nil
	}
	for _, id := range q.ids {
		x := queuedRun{id: id, job: h.job, rev: q.rev, queuedAt: now, grp: q.grp, kind: api.KindJob, owner: q.owner, priority: q.priority}
		if err := s.enqueue(ctx, x); err != nil {
			return 0, nil, fmt.Errorf("webhook %s: run %d: %w", h.name, id, err)
		}
	}
	s.hooks.deliveries.WithLabelValues("accepted").Inc()
	s.log.Info("webhook delivery queued", "hook", h.name, "delivery", ev.delivery, "job", h.job, "run", q.ids[0], "ref", ev.ref, "commit", ev.commit)
	return http.StatusAccepted, &api.WebhookDelivery{Run: itoa(q.ids[0])}, nil
}

package scheduler

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/durable"
	"github.com/kiln-build/kiln/names"
)

// Token kinds.
const (
	kindAdmin      = "admin"
	kindEnrollment = "enrollment"
	kindWorker     = "worker"
	kindClient     = "client"
	// kindPublic is no token: the reader of a public web view ([ui]
	// public), which reads every job and writes nothing. The API never
	// resolves a request to it.
	kindPublic = "public"
)

// principal is who made a request. A resolved principal is shared by the
// requests that present the same token (authCache), so it is never copied.
type principal struct {
	kind string
	host string // worker: its host name
	hash string // the token's hash (rate-limit bucket, upload sessions)
	name string // client: the token's name
	// ownerKey is the owner of what a client token adds and may see (see
	// clientOwner).
	ownerKey string
	expires  int64 // client: Unix ns after which it is refused; 0: never
	// lastUsed is the client token's last recorded use (Unix ns), so that
	// recording it costs a write only once per lastUsedEvery.
	lastUsed atomic.Int64
}

func newToken(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// authenticate resolves a bearer token. Tokens are stored as sha256
// hashes; the row is found by hash and the hash compared in constant time.
func (s *Server) authenticate(ctx context.Context, r *http.Request) (*principal, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "missing bearer token")
	}
	h := hashToken(tok)
	p, gen, ok := s.auth.get(h, time.Now())
	if !ok {
		var err error
		if p, err = s.lookupToken(ctx, h); err != nil {
			return nil, err
		}
		if p.kind != kindEnrollment {
			s.auth.put(h, p, gen, time.Now())
		}
	}
	if p.kind == kindClient {
		// Checked on every request, cached or not: expiry needs no
		// cache clear.
		if p.expires != 0 && s.now().UnixNano() > p.expires {
			return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "client token %q expired", p.name)
		}
		s.noteClientUse(ctx, p)
	}
	return p, nil
}

func (s *Server) lookupToken(ctx context.Context, h string) (*principal, error) {
	t, found, err := s.st.token(ctx, h)
	if err != nil {
		return nil, err
	}
	if !found || subtle.ConstantTimeCompare([]byte(t.hash), []byte(h)) != 1 {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "unknown token")
	}
	p := &principal{hash: h, kind: t.kind}
	if p.kind == kindEnrollment && (t.used || (t.expires.Valid && s.now().UnixNano() > t.expires.Int64)) {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "enrollment token used or expired")
	}
	p.host, p.name = t.host.String, t.name.String
	if p.kind == kindClient {
		p.expires = t.expires.Int64
		p.lastUsed.Store(t.lastUsed.Int64)
		p.ownerKey = clientOwner(t.name.String, t.group.String)
	}
	return p, nil
}

// authCache remembers resolved admin, worker and client tokens, which
// change only when a host is removed or a client token revoked. Such a
// change clears the cache of every replica: the one that made it at once,
// the others when its notification arrives (chanAuth). An entry also
// expires authCacheTTL after it was read, the backstop for a
// notification that never came (a replica whose listener is reconnecting
// clears its cache when it is back, but a change between the two is
// not replayed).
type authCache struct {
	mu  sync.Mutex
	m   map[string]authEntry
	gen uint64 // bumped by clear, so a lookup racing a removal is not cached
}

// authCacheTTL bounds how long a revoked token or removed host can stay
// accepted by a replica that missed the notification.
const authCacheTTL = 5 * time.Second

type authEntry struct {
	p  *principal
	at time.Time // when the token was looked up
}

// get answers the cached principal of token hash h, unless it was looked
// up authCacheTTL or longer before now, and the generation to put with.
func (c *authCache) get(h string, now time.Time) (*principal, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[h]
	if !ok || now.Sub(e.at) >= authCacheTTL || now.Before(e.at) {
		return nil, c.gen, false
	}
	return e.p, c.gen, true
}

// put caches p, looked up at now, unless the cache was cleared since the
// get that returned gen.
func (c *authCache) put(h string, p *principal, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) > 10000 {
		c.m = map[string]authEntry{}
	}
	c.m[h] = authEntry{p: p, at: now}
}

func (c *authCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
	c.gen++
}

// ensureAdminToken makes the admin token on first start: written to
// <data-dir>/admin.token (0600) before its hash is stored, so a crash in
// between leaves a file that the next start adopts.
func (s *Server) ensureAdminToken(ctx context.Context) error {
	// Replicas starting together: one makes the token, the others find it.
	return s.st.exclusive(ctx, adminTokenLock, s.ensureAdminTokenLocked)
}

func (s *Server) ensureAdminTokenLocked(ctx context.Context) error {
	n, err := s.st.countTokens(ctx, kindAdmin)
	if err != nil {
		return err
	}
	path := filepath.Join(s.dataDir, "admin.token")
	if n > 0 {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("admin token file is gone; the stored admin token still works", "path", path)
		}
		return nil
	}
	b, err := os.ReadFile(path)
	tok := strings.TrimSpace(string(b))
	if errors.Is(err, fs.ErrNotExist) || tok == "" {
		tok = newToken("kiln_admin_")
		if err := durable.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			return fmt.Errorf("write admin token: %w", err)
		}
	} else if err != nil {
		return err
	}
	if err := s.st.addAdminToken(ctx, hashToken(tok), s.now()); err != nil {
		return err
	}
	s.log.Info("created the admin token; keep it secret", "path", path)
	return nil
}

func validLabels(l map[string]string) error {
	for k, v := range l {
		if !names.Valid(k) || strings.ContainsAny(v, "\x00\n") || len(v) > 256 {
			return badRequest("label %q=%q: want a name and a short value", k, v)
		}
	}
	return nil
}

func (s *Server) createEnrollmentToken(ctx context.Context, req *api.EnrollmentTokenRequest) (*api.EnrollmentToken, error) {
	if err := validLabels(req.Labels); err != nil {
		return nil, err
	}
	ttl := time.Duration(req.TTL)
	if ttl <= 0 {
		ttl = s.enrollTTL
	}
	tok := newToken("kiln_enroll_")
	now := s.now()
	labels, _ := jsonString(req.Labels)
	exp := now.Add(ttl)
	if err := s.st.addEnrollmentToken(ctx, hashToken(tok), labels, now, exp); err != nil {
		return nil, err
	}
	return &api.EnrollmentToken{Token: tok, Expires: exp.UTC()}, nil
}

// enroll uses up an enrollment token and creates a host with its own
// worker credential.
func (s *Server) enroll(ctx context.Context, p *principal, req *api.EnrollRequest) (*api.EnrollResponse, error) {
	name := req.Name
	if name != "" && !names.Valid(name) {
		return nil, badRequest("host name %q is not valid", name)
	}
	if err := validLabels(req.Facts.Labels); err != nil {
		return nil, err
	}
	keyID, err := hostSigningKey(req)
	if err != nil {
		return nil, err
	}
	tok := newToken("kiln_worker_")
	now := s.now()
	facts, _ := jsonString(req.Facts)
	resp := &api.EnrollResponse{Token: tok, ServerID: s.id}
	resp.Name, resp.Labels, resp.LabelConflicts, err = s.st.enroll(ctx, enrollment{tokenHash: p.hash, name: name, asked: req.Facts.Labels,
		facts: facts, workerHash: hashToken(tok), keyID: keyID, keyPEM: req.SigningKey, now: now})
	if err != nil {
		return nil, err
	}
	s.log.Info("host enrolled", "host", resp.Name, "labels", resp.Labels, "label_conflicts", resp.LabelConflicts)
	return resp, nil
}

// mergeEnrollLabels merges the labels of an enrollment token (set by an
// admin) with those the enrolling host asks for. On a conflict the
// token's value wins: the admin chose it, and refusing would only send the
// host's operator back for a new token. The refused values are returned
// so that the enroll answer can report them.
func mergeEnrollLabels(token, asked map[string]string) (labels, conflicts map[string]string) {
	labels = make(map[string]string, len(token)+len(asked))
	for k, v := range asked {
		labels[k] = v
	}
	for k, v := range token {
		if a, ok := asked[k]; ok && a != v {
			if conflicts == nil {
				conflicts = map[string]string{}
			}
			conflicts[k] = a
		}
		labels[k] = v
	}
	return labels, conflicts
}

// hostState returns the labels a host was enrolled with, the only ones
// that count for matching (labels in a worker's facts are informational),
// and whether it is drained.
//
// On PostgreSQL, where the read is a round trip on every lease call, the
// answer is cached for hostStateTTL: a drain through another replica then
// counts from the next lease call after that, as one during a lease's
// long poll counts from the next call anyway.
func (s *Server) hostState(ctx context.Context, host string) (labels map[string]string, drained bool, err error) {
	if s.st.postgres() {
		if v, ok := s.hostStates.Load(host); ok {
			if c := v.(hostCached); time.Since(c.at) < hostStateTTL {
				return c.labels, c.drained, nil
			}
		}
		defer func() {
			if err == nil {
				s.hostStates.Store(host, hostCached{labels: labels, drained: drained, at: time.Now()})
			}
		}()
	}
	return s.st.hostState(ctx, host)
}

// hostCached is a hostState answer and when it was read.
type hostCached struct {
	labels  map[string]string
	drained bool
	at      time.Time
}

// hostStateTTL bounds the age of a cached hostState answer.
const hostStateTTL = time.Second

func (s *Server) listHosts(ctx context.Context, name string) ([]api.Host, error) {
	return s.st.hosts(ctx, name)
}

func (s *Server) drainHost(ctx context.Context, name string) (*api.Host, error) {
	defer s.hostStates.Delete(name)
	if err := s.st.drainHost(ctx, name); err != nil {
		return nil, err
	}
	hs, err := s.listHosts(ctx, name)
	if err != nil {
		return nil, err
	}
	return &hs[0], nil
}

// removeHost deletes the host and its credential, and expires its leases
// now so that its runs are requeued (or end) at once.
func (s *Server) removeHost(ctx context.Context, name string) error {
	defer s.hostStates.Delete(name)
	err := s.st.removeHost(ctx, name, s.now())
	s.auth.clear()
	if err != nil {
		return err
	}
	return s.expireLeases(ctx)
}

func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

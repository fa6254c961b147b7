package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

// Signed provenance (docs/publishing.md): the server keeps each host's
// public signing key and each run's envelope, and hands them out; it
// signs nothing itself, and a verifier need not trust it beyond the keys
// it exports.

// hostSigningKey parses the key of an enroll request ("" for an older
// worker: no key).
func hostSigningKey(req *api.EnrollRequest) (string, error) {
	if req.SigningKey == "" {
		return "", nil
	}
	pub, err := attest.ParsePublicKey(req.SigningKey)
	if err != nil {
		return "", badRequest("signing_key: %v", err)
	}
	return attest.KeyID(pub)
}

// storeHostKey records host's key at enroll.
func storeHostKey(tx *wtx, host, keyID, pem string, now time.Time) error {
	if keyID == "" {
		return nil
	}
	_, err := tx.Exec(`INSERT INTO host_keys(key_id, host, public_key, created) VALUES (?,?,?,?)`, keyID, host, pem, ns(now))
	return err
}

// revokeHostKeys marks a removed host's keys revoked from now on.
func revokeHostKeys(tx *wtx, host string, now time.Time) error {
	_, err := tx.Exec(`UPDATE host_keys SET revoked = ? WHERE host = ? AND revoked IS NULL`, ns(now), host)
	return err
}

// hostKeys lists keys, of one host when host is not "".
func (s *Server) hostKeys(ctx context.Context, host string) ([]api.HostKey, error) {
	rows, err := s.st.query(ctx, `SELECT key_id, host, public_key, created, revoked FROM host_keys WHERE ? = '' OR host = ? ORDER BY host, created`, host, host)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.HostKey{}
	for rows.Next() {
		var k api.HostKey
		var created, revoked sql.NullInt64
		if err := rows.Scan(&k.KeyID, &k.Host, &k.PublicKey, &created, &revoked); err != nil {
			return nil, err
		}
		k.Created, k.Revoked = fromNS(created), fromNS(revoked)
		out = append(out, k)
	}
	return out, rows.Err()
}

// checkAttestation keeps req's envelope only when it verifies with the
// reporting host's current key and its subjects are exactly the reported
// artifacts; otherwise it is dropped (logged), and the result stands
// without it: a bad signature must not fail a run, nor make its worker
// send the result again and again.
func (s *Server) checkAttestation(ctx context.Context, host string, req *api.ResultRequest) {
	if len(req.Attestation) == 0 {
		return
	}
	err := func() error {
		keys, err := s.hostKeys(ctx, host)
		if err != nil {
			return err
		}
		keys = slices.DeleteFunc(keys, func(k api.HostKey) bool { return !k.Revoked.IsZero() })
		ks, err := attest.NewKeySet(keys)
		if err != nil {
			return err
		}
		var env dsse.Envelope
		if err := json.Unmarshal(req.Attestation, &env); err != nil {
			return err
		}
		v, err := attest.VerifyEnvelope(ctx, &env, ks)
		if err != nil {
			return err
		}
		want := make([]string, 0, len(req.Artifacts))
		for _, a := range req.Artifacts {
			want = append(want, a.Path+"\x00"+a.SHA256)
		}
		got := make([]string, 0, len(v.Statement.Subjects))
		for _, a := range v.Statement.Subjects {
			got = append(got, a.Path+"\x00"+a.SHA256)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return errors.New("its subjects are not the reported artifacts")
		}
		return nil
	}()
	if err != nil {
		s.log.Warn("run attestation dropped", "host", host, "err", err)
		req.Attestation = nil
	}
}

// storeAttestation records a checked envelope with the run's result.
func storeAttestation(tx *wtx, run int64, host string, req *api.ResultRequest) error {
	if len(req.Attestation) == 0 {
		return nil
	}
	var env dsse.Envelope
	if err := json.Unmarshal(req.Attestation, &env); err != nil {
		return err
	}
	_, err := tx.Exec(`INSERT INTO run_attestations(run, host, key_id, envelope) VALUES (?,?,?,?)`, run, host, env.Signatures[0].KeyID, string(req.Attestation))
	return err
}

func (s *Server) runAttestation(ctx context.Context, id int64) (host string, env json.RawMessage, err error) {
	var e string
	err = s.st.queryRow(ctx, `SELECT host, envelope FROM run_attestations WHERE run = ?`, id).Scan(&host, &e)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, notFound("run %d has no attestation (it did not succeed with artifacts, or its host has no signing key)", id)
	}
	return host, json.RawMessage(e), err
}

// fillKeyIDs sets each host's current key.
func (s *Server) fillKeyIDs(ctx context.Context, hs []api.Host) error {
	keys, err := s.hostKeys(ctx, "")
	if err != nil {
		return err
	}
	for i := range hs {
		for _, k := range keys {
			if k.Host == hs[i].Name && k.Revoked.IsZero() {
				hs[i].KeyID = k.KeyID
			}
		}
	}
	return nil
}

func (s *Server) hHostKeys(w http.ResponseWriter, r *http.Request, _ *principal) error {
	keys, err := s.hostKeys(r.Context(), "")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, keys)
}

func (s *Server) hRunAttestation(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	_, env, err := s.runAttestation(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, env)
}

// hGroupAttestation answers a reproducible group's members' envelopes,
// one per distinct host: identical subjects (the verdict compared them),
// vouched for by as many hosts as ran the group.
func (s *Server) hGroupAttestation(w http.ResponseWriter, r *http.Request, p *principal) error {
	grp, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || grp <= 0 {
		return notFound("no group %q", r.PathValue("id"))
	}
	var owner string
	err = s.st.queryRow(r.Context(), `SELECT owner FROM groups WHERE id = ?`, grp).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
		return notFound("no group %d", grp)
	}
	if err != nil {
		return err
	}
	g, err := s.getGroup(r.Context(), grp)
	if err != nil {
		return err
	}
	if g.Verdict == nil || !g.Verdict.Reproducible {
		return errorf(http.StatusConflict, "not_reproducible", "group %d has no reproducible verdict: no group attestation", grp)
	}
	out := api.GroupAttestation{Group: g.ID, Job: g.Job, Revision: g.Revision, Members: []api.RunAttestation{}}
	seen := map[string]bool{}
	for _, m := range g.Members {
		id, err := parseRunID(m.ID)
		if err != nil {
			return err
		}
		host, env, err := s.runAttestation(r.Context(), id)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusNotFound {
				continue
			}
			return err
		}
		if seen[host] {
			continue
		}
		seen[host] = true
		out.Members = append(out.Members, api.RunAttestation{Run: m.ID, Host: host, Envelope: env})
	}
	return writeJSON(w, http.StatusOK, out)
}

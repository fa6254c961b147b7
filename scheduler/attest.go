package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

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
		keys, err := s.st.hostKeys(ctx, host)
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

// fillKeyIDs sets each host's current key.
func (s *Server) fillKeyIDs(ctx context.Context, hs []api.Host) error {
	keys, err := s.st.hostKeys(ctx, "")
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
	keys, err := s.st.hostKeys(r.Context(), "")
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
	_, env, err := s.st.runAttestation(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, env)
}

// hGroupAttestation answers a reproducible group's members' envelopes,
// one per distinct host: identical subjects (the verdict compared them),
// vouched for by as many hosts as ran the group.
func (s *Server) hGroupAttestation(w http.ResponseWriter, r *http.Request, p *principal) error {
	g, grp, err := s.groupOfPath(r, p)
	if err != nil {
		return err
	}
	if g.Verdict == nil || !g.Verdict.Reproducible {
		return errorf(http.StatusConflict, api.CodeNotReproducible, "group %d has no reproducible verdict: no group attestation", grp)
	}
	vars := make([]map[string]string, 0, len(g.Members))
	for _, m := range g.Members {
		vars = append(vars, m.Variations)
	}
	out := api.GroupAttestation{Group: g.ID, Job: g.Job, Revision: g.Revision, Members: []api.RunAttestation{}, Varied: api.DifferedIn(vars)}
	seen := map[string]bool{}
	for _, m := range g.Members {
		id, err := parseRunID(m.ID)
		if err != nil {
			return err
		}
		host, env, err := s.st.runAttestation(r.Context(), id)
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

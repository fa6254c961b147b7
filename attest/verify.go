package attest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/kiln-build/kiln/api"
)

// Sign wraps statement in a DSSE envelope signed by s.
func Sign(ctx context.Context, s *Signer, statement []byte) (*dsse.Envelope, error) {
	es, err := dsse.NewEnvelopeSigner(s)
	if err != nil {
		return nil, err
	}
	return es.SignPayload(ctx, PayloadType, statement)
}

// KeySet is the host keys a verifier trusts, by key ID (as `kiln host
// keys` exports them).
type KeySet map[string]api.HostKey

// NewKeySet indexes keys by their ID, recomputed from the public key so
// that an exported file cannot pair a key with another key's ID.
func NewKeySet(keys []api.HostKey) (KeySet, error) {
	ks := KeySet{}
	for _, k := range keys {
		pub, err := ParsePublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("key of host %s: %w", k.Host, err)
		}
		id, err := KeyID(pub)
		if err != nil {
			return nil, err
		}
		if k.KeyID != "" && k.KeyID != id {
			return nil, fmt.Errorf("key of host %s: key_id %s does not match its public key (%s)", k.Host, k.KeyID, id)
		}
		k.KeyID = id
		ks[id] = k
	}
	return ks, nil
}

// Vouch is one verified envelope: which host signed, with which key,
// what.
type Vouch struct {
	Host      string
	KeyID     string
	Statement *ParsedStatement
}

// VerifyEnvelope checks env against keys: a signature by a known key
// that verifies over the DSSE PAE, of a key not revoked at or before the
// run's finish, from the host the statement names as its builder. A
// signature by an unknown key, by a revoked key or that does not verify
// is an error naming it.
func VerifyEnvelope(ctx context.Context, env *dsse.Envelope, keys KeySet) (*Vouch, error) {
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("payload type %q, want %q", env.PayloadType, PayloadType)
	}
	if len(env.Signatures) == 0 {
		return nil, errors.New("envelope has no signature")
	}
	var errs []error
	for _, sig := range env.Signatures {
		k, ok := keys[sig.KeyID]
		if !ok {
			errs = append(errs, fmt.Errorf("signed by unknown key %s", sig.KeyID))
			continue
		}
		pub, err := ParsePublicKey(k.PublicKey)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s of host %s: %w", k.KeyID, k.Host, err))
			continue
		}
		one := &dsse.Envelope{PayloadType: env.PayloadType, Payload: env.Payload, Signatures: []dsse.Signature{sig}}
		ev, err := dsse.NewEnvelopeVerifier(verifier{pub: pub, keyID: k.KeyID})
		if err != nil {
			return nil, err
		}
		_, payload, err := ev.VerifyAndDecode(ctx, one)
		if err != nil {
			errs = append(errs, fmt.Errorf("signature by key %s of host %s does not verify: %w", k.KeyID, k.Host, err))
			continue
		}
		st, err := ParseStatement(payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("host %s signed: %w", k.Host, err))
			continue
		}
		if !k.Revoked.IsZero() && !k.Revoked.After(st.Finished) {
			errs = append(errs, fmt.Errorf("signed by key %s of host %s, revoked %s, not after the run finished (%s)",
				k.KeyID, k.Host, k.Revoked.UTC().Format(time.RFC3339), st.Finished.UTC().Format(time.RFC3339)))
			continue
		}
		if st.Builder != BuilderPrefix+k.Host {
			errs = append(errs, fmt.Errorf("signed by key %s of host %s, but the statement names builder %q", k.KeyID, k.Host, st.Builder))
			continue
		}
		return &Vouch{Host: k.Host, KeyID: k.KeyID, Statement: st}, nil
	}
	return nil, errors.Join(errs...)
}

// File is a file to verify: a name for messages and its sha256 (hex).
type File struct {
	Name   string
	SHA256 string
}

// FileResult says which hosts vouched for a file, and under what subject
// names.
type FileResult struct {
	File     File
	Hosts    []string
	Subjects []string
}

// Verify checks every envelope (any bad one is an error: an attestation
// set is trusted whole or not at all), then that each file's digest is a
// subject of envelopes from at least quorum distinct hosts.
func Verify(ctx context.Context, files []File, envs []*dsse.Envelope, keys KeySet, quorum int) ([]FileResult, error) {
	quorum = max(quorum, 1)
	if len(envs) == 0 {
		return nil, errors.New("no attestation to verify against")
	}
	var vouches []*Vouch
	for i, env := range envs {
		v, err := VerifyEnvelope(ctx, env, keys)
		if err != nil {
			return nil, fmt.Errorf("attestation %d: %w", i+1, err)
		}
		vouches = append(vouches, v)
	}
	var results []FileResult
	var errs []error
	for _, f := range files {
		r := FileResult{File: f}
		for _, v := range vouches {
			for _, s := range v.Statement.Subjects {
				if s.SHA256 != f.SHA256 {
					continue
				}
				if !slices.Contains(r.Hosts, v.Host) {
					r.Hosts = append(r.Hosts, v.Host)
				}
				if !slices.Contains(r.Subjects, s.Path) {
					r.Subjects = append(r.Subjects, s.Path)
				}
			}
		}
		slices.Sort(r.Hosts)
		switch {
		case len(r.Hosts) == 0:
			errs = append(errs, fmt.Errorf("%s (sha256 %s): no attestation names this digest (file changed, or not an artifact of these runs)", f.Name, f.SHA256))
		case len(r.Hosts) < quorum:
			errs = append(errs, fmt.Errorf("%s: vouched for by %d distinct host(s) (%s), quorum is %d", f.Name, len(r.Hosts), strings.Join(r.Hosts, ", "), quorum))
		}
		results = append(results, r)
	}
	return results, errors.Join(errs...)
}

// ReadEnvelopes decodes what the attestation endpoints answer: one DSSE
// envelope (GET /v1/runs/{id}/attestation), a group attestation (GET
// /v1/groups/{id}/attestation), or a JSON array of envelopes.
func ReadEnvelopes(data []byte) ([]*dsse.Envelope, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '[' {
		var envs []*dsse.Envelope
		if err := json.Unmarshal(data, &envs); err != nil {
			return nil, fmt.Errorf("attestations: %w", err)
		}
		return envs, nil
	}
	var probe struct {
		PayloadType string               `json:"payloadType"`
		Members     []api.RunAttestation `json:"members"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("attestation: %w", err)
	}
	if probe.PayloadType != "" {
		var env dsse.Envelope
		if err := json.Unmarshal(data, &env); err != nil {
			return nil, fmt.Errorf("attestation: %w", err)
		}
		return []*dsse.Envelope{&env}, nil
	}
	if probe.Members == nil {
		return nil, errors.New("attestation: neither a DSSE envelope nor a group attestation")
	}
	var envs []*dsse.Envelope
	for _, m := range probe.Members {
		var env dsse.Envelope
		if err := json.Unmarshal(m.Envelope, &env); err != nil {
			return nil, fmt.Errorf("attestation of run %s: %w", m.Run, err)
		}
		envs = append(envs, &env)
	}
	return envs, nil
}

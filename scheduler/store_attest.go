package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on hosts' signing keys and runs' attestations.

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
func (s *store) hostKeys(ctx context.Context, host string) ([]api.HostKey, error) {
	rows, err := s.query(ctx, `SELECT key_id, host, public_key, created, revoked FROM host_keys WHERE ? = '' OR host = ? ORDER BY host, created`, host, host)
	return collect(rows, err, func(row rowScanner) (api.HostKey, error) {
		var k api.HostKey
		var created, revoked sql.NullInt64
		if err := row.Scan(&k.KeyID, &k.Host, &k.PublicKey, &created, &revoked); err != nil {
			return k, err
		}
		k.Created, k.Revoked = fromNS(created), fromNS(revoked)
		return k, nil
	})
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

// runAttestation reads run id's envelope and the host that signed it.
func (s *store) runAttestation(ctx context.Context, id int64) (host string, env json.RawMessage, err error) {
	var e string
	err = s.queryRow(ctx, `SELECT host, envelope FROM run_attestations WHERE run = ?`, id).Scan(&host, &e)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, notFound("run %d has no attestation (it did not succeed with artifacts, or its host has no signing key)", id)
	}
	return host, json.RawMessage(e), err
}

package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on tokens and enrollment.

// storedToken is a row of tokens.
type storedToken struct {
	hash, kind        string
	host, name, group sql.NullString
	expires, lastUsed sql.NullInt64
	used              bool
}

// token reads the token of hash h; ok is false for none.
func (s *store) token(ctx context.Context, h string) (t storedToken, ok bool, err error) {
	err = s.queryRow(ctx, `SELECT hash, kind, host, name, expires, used, last_used, owner_group FROM tokens WHERE hash = ?`, h).
		Scan(&t.hash, &t.kind, &t.host, &t.name, &t.expires, &t.used, &t.lastUsed, &t.group)
	if errors.Is(err, sql.ErrNoRows) {
		return t, false, nil
	}
	return t, err == nil, err
}

// authChanged tells every other replica, in tx, that a token was revoked
// or a host removed, so that they clear their auth caches once tx commits
// (the caller clears its own). SQLite has no other replica.
func authChanged(tx *wtx) error {
	if tx.st.pg == nil {
		return nil
	}
	_, err := tx.Exec(`SELECT pg_notify(?, '')`, chanAuth)
	return err
}

// countTokens counts the tokens of kind.
func (s *store) countTokens(ctx context.Context, kind string) (int, error) {
	var n int
	err := s.queryRow(ctx, `SELECT count(*) FROM tokens WHERE kind = ?`, kind).Scan(&n)
	return n, err
}

// addAdminToken stores an admin token's hash.
func (s *store) addAdminToken(ctx context.Context, hash string, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`INSERT INTO tokens(hash, kind, created) VALUES (?,?,?)`, hash, kindAdmin, ns(now))
		return err
	})
}

// addEnrollmentToken stores an enrollment token's hash with the labels
// (JSON) it gives a host, until expires.
func (s *store) addEnrollmentToken(ctx context.Context, hash, labels string, now, expires time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`INSERT INTO tokens(hash, kind, labels, created, expires) VALUES (?,?,?,?,?)`, hash, kindEnrollment, labels, ns(now), ns(expires))
		return err
	})
}

// enrollment is a host enrolling with enrollment token tokenHash: its name
// ("" for a made-up one), the labels it asks for, its facts (JSON), its
// worker token's hash and its signing key (keyID "" for none).
type enrollment struct {
	tokenHash, name string
	asked           map[string]string
	facts           string
	workerHash      string
	keyID, keyPEM   string
	now             time.Time
}

// enroll uses up the enrollment token and creates the host with its worker
// token and key, in one transaction. It answers the host's name and
// labels, and the asked labels that the token's overrode.
func (s *store) enroll(ctx context.Context, e enrollment) (name string, labels, conflicts map[string]string, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		var labelsJSON string
		res, err := tx.Exec(`UPDATE tokens SET used = 1 WHERE hash = ? AND kind = ? AND used = 0`, e.tokenHash, kindEnrollment)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errorf(http.StatusUnauthorized, api.CodeUnauthorized, "enrollment token used or expired")
		}
		if err := tx.QueryRow(`SELECT labels FROM tokens WHERE hash = ?`, e.tokenHash).Scan(&labelsJSON); err != nil {
			return err
		}
		var tokenLabels map[string]string
		if err := json.Unmarshal([]byte(labelsJSON), &tokenLabels); err != nil {
			return fmt.Errorf("enrollment token labels: %w", err)
		}
		labels, conflicts = mergeEnrollLabels(tokenLabels, e.asked)
		name = e.name
		if name == "" {
			name = "host-" + newFence()[:8]
		}
		var exists int
		if err := tx.QueryRow(`SELECT count(*) FROM hosts WHERE name = ?`, name).Scan(&exists); err != nil {
			return err
		}
		if exists > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "host %q is already enrolled (remove it first)", name)
		}
		lj, _ := jsonString(labels)
		if _, err := tx.Exec(`INSERT INTO hosts(name, labels, facts, created, last_seen) VALUES (?,?,?,?,?)`, name, lj, e.facts, ns(e.now), ns(e.now)); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO tokens(hash, kind, host, created) VALUES (?,?,?,?)`, e.workerHash, kindWorker, name, ns(e.now)); err != nil {
			return err
		}
		return storeHostKey(tx, name, e.keyID, e.keyPEM, e.now)
	})
	return name, labels, conflicts, err
}

// touchClientToken records the client token's last use (Unix ns).
func (s *store) touchClientToken(ctx context.Context, hash string, now int64) error {
	return s.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE tokens SET last_used = ? WHERE hash = ? AND kind = ?`, now, hash, kindClient)
		return err
	})
}

// addClientToken stores a client token's hash under name, of group
// (none: not valid) and expiring at expires (none: not valid), unless a
// client token of that name exists (a conflict error).
func (s *store) addClientToken(ctx context.Context, hash, name string, group sql.NullString, expires sql.NullInt64, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM tokens WHERE kind = ? AND name = ?`, kindClient, name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "client token %q exists (revoke it first)", name)
		}
		_, err := tx.Exec(`INSERT INTO tokens(hash, kind, name, created, expires, owner_group) VALUES (?,?,?,?,?,?)`, hash, kindClient, name, ns(now), expires, group)
		return err
	})
}

// clientTokens lists the client tokens by name; Expired is as of now.
func (s *store) clientTokens(ctx context.Context, now time.Time) ([]api.ClientTokenInfo, error) {
	rows, err := s.query(ctx, `SELECT name, coalesce(owner_group, ''), created, expires, last_used FROM tokens WHERE kind = ? ORDER BY name`, kindClient)
	return collect(rows, err, func(row rowScanner) (api.ClientTokenInfo, error) {
		var ti api.ClientTokenInfo
		var created, expires, lastUsed sql.NullInt64
		if err := row.Scan(&ti.Name, &ti.Group, &created, &expires, &lastUsed); err != nil {
			return ti, err
		}
		ti.Created, ti.Expires, ti.LastUsed = fromNS(created), fromNS(expires), fromNS(lastUsed)
		ti.Expired = !ti.Expires.IsZero() && now.After(ti.Expires)
		return ti, nil
	})
}

// revokeClientToken deletes client token name (a not-found error for
// none) and tells the other replicas (authChanged).
func (s *store) revokeClientToken(ctx context.Context, name string) error {
	return s.write(ctx, func(tx *wtx) error {
		res, err := tx.Exec(`DELETE FROM tokens WHERE kind = ? AND name = ?`, kindClient, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("no client token %q", name)
		}
		return authChanged(tx)
	})
}

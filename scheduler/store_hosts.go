package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on enrolled hosts.

// hostState reads the labels host was enrolled with and whether it is
// drained.
func (s *store) hostState(ctx context.Context, host string) (labels map[string]string, drained bool, err error) {
	var lj string
	if err := s.queryRow(ctx, `SELECT labels, drained FROM hosts WHERE name = ?`, host).Scan(&lj, &drained); err != nil {
		return nil, false, err
	}
	return labels, drained, json.Unmarshal([]byte(lj), &labels)
}

// hosts lists the hosts by name, or host name only ("": all; a not-found
// error when there is no such host), with their leases counted.
func (s *store) hosts(ctx context.Context, name string) ([]api.Host, error) {
	q := `SELECT h.name, h.labels, h.facts, h.created, h.last_seen, h.drained,
		(SELECT count(*) FROM runs r WHERE r.host = h.name AND r.state IN ('leased', 'running')) FROM hosts h`
	args := []any{}
	if name != "" {
		q += ` WHERE h.name = ?`
		args = append(args, name)
	}
	rows, err := s.query(ctx, q+` ORDER BY h.name`, args...)
	out, err := collect(rows, err, func(row rowScanner) (api.Host, error) {
		var h api.Host
		var lj, fj string
		var created, seen sql.NullInt64
		if err := row.Scan(&h.Name, &lj, &fj, &created, &seen, &h.Drained, &h.Leases); err != nil {
			return h, err
		}
		_ = json.Unmarshal([]byte(lj), &h.Labels) // written by this server as JSON
		_ = json.Unmarshal([]byte(fj), &h.Facts)
		h.Created, h.LastSeen = fromNS(created), fromNS(seen)
		return h, nil
	})
	if err != nil {
		return nil, err
	}
	if name != "" && len(out) == 0 {
		return nil, notFound("no host %q", name)
	}
	return out, nil
}

// drainHost marks host name drained (a not-found error for none).
func (s *store) drainHost(ctx context.Context, name string) error {
	return s.write(ctx, func(tx *wtx) error {
		res, err := tx.Exec(`UPDATE hosts SET drained = 1 WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("no host %q", name)
		}
		return nil
	})
}

// removeHost deletes host name (a not-found error for none) and its worker
// token, revokes its keys at now, makes its leases expire and tells the
// other replicas (authChanged).
func (s *store) removeHost(ctx context.Context, name string, now time.Time) error {
	return s.write(ctx, func(tx *wtx) error {
		res, err := tx.Exec(`DELETE FROM hosts WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("no host %q", name)
		}
		if _, err := tx.Exec(`DELETE FROM tokens WHERE kind = ? AND host = ?`, kindWorker, name); err != nil {
			return err
		}
		if err := revokeHostKeys(tx, name, now); err != nil {
			return err
		}
		if _, err = tx.Exec(`UPDATE runs SET lease_expires = 0 WHERE host = ? AND state IN (?, ?)`, name, api.StateLeased, api.StateRunning); err != nil {
			return err
		}
		return authChanged(tx)
	})
}

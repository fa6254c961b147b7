package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on incoming webhooks and their deliveries.

// storedHook is a row of webhooks; secret is sealed (secretBox).
type storedHook struct {
	name, job, format, secret, owner, tokenHash string
	created                                     time.Time
	accepted, refused                           int64
	lastRun                                     sql.NullInt64
}

func (h *storedHook) info() api.Webhook {
	w := api.Webhook{Name: h.name, Job: h.job, Format: h.format, Path: "/v1/webhooks/" + h.name,
		Created: h.created.UTC(), Accepted: h.accepted, Refused: h.refused, Owner: ownerName(h.owner)}
	if h.lastRun.Valid {
		w.LastRun = itoa(h.lastRun.Int64)
	}
	return w
}

const hookColumns = `name, job, format, secret, owner, token_hash, created, accepted, refused, last_run`

func scanHook(r rowScanner) (*storedHook, error) {
	h := &storedHook{}
	var created int64
	if err := r.Scan(&h.name, &h.job, &h.format, &h.secret, &h.owner, &h.tokenHash, &created, &h.accepted, &h.refused, &h.lastRun); err != nil {
		return nil, err
	}
	h.created = time.Unix(0, created)
	return h, nil
}

// addWebhook stores h if p sees its job and no hook has its name.
func (s *store) addWebhook(ctx context.Context, p *principal, h *storedHook) error {
	return s.write(ctx, func(tx *wtx) error {
		if err := jobVisible(tx, p, h.job); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM webhooks WHERE name = ?`, h.name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "webhook %q exists (remove it first)", h.name)
		}
		_, err := tx.Exec(`INSERT INTO webhooks(name, job, format, secret, owner, token_hash, created) VALUES (?,?,?,?,?,?,?)`,
			h.name, h.job, h.format, h.secret, h.owner, h.tokenHash, ns(h.created))
		return err
	})
}

// webhook reads hook name; nil when there is none.
func (s *store) webhook(ctx context.Context, name string) (*storedHook, error) {
	h, err := scanHook(s.queryRow(ctx, `SELECT `+hookColumns+` FROM webhooks WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return h, err
}

// webhooks lists the hooks of owner ("" for all).
func (s *store) webhooks(ctx context.Context, owner string) ([]api.Webhook, error) {
	rows, err := s.query(ctx, `SELECT `+hookColumns+` FROM webhooks WHERE ? = '' OR owner = ? ORDER BY name`, owner, owner)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Webhook{}
	for rows.Next() {
		h, err := scanHook(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, h.info())
	}
	return out, rows.Err()
}

// removeWebhook deletes hook name if p sees it, with its delivery ids.
func (s *store) removeWebhook(ctx context.Context, p *principal, name string) error {
	return s.write(ctx, func(tx *wtx) error {
		var owner string
		err := tx.QueryRow(`SELECT owner FROM webhooks WHERE name = ?`, name).Scan(&owner)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(owner)) {
			return notFound("no webhook %q", name)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`DELETE FROM webhook_deliveries WHERE hook = ?`, name); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM webhooks WHERE name = ?`, name)
		return err
	})
}

// refuseWebhook counts a refused (401) delivery of hook name.
func (s *store) refuseWebhook(ctx context.Context, name string) error {
	return s.writeOne(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE webhooks SET refused = refused + 1 WHERE name = ?`, name)
		return err
	})
}

// hookDelivery is a verified delivery to queue: hook's job as p, with env
// (JSON) in its runs.
type hookDelivery struct {
	hook      string
	job       string
	delivery  string
	env       string
	now       time.Time
	maxQueued func(owner string) int
}

// deliver queues the runs of delivery d in one write, unless the hook saw
// its delivery id before: then dup is the run the first one queued and
// nothing is queued. The hook must still exist (a delivery racing a
// remove queues nothing) and p must still see the job.
func (s *store) deliver(ctx context.Context, p *principal, d hookDelivery) (q queued, dup int64, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		q, dup = queued{}, 0
		err := tx.QueryRow(`SELECT run FROM webhook_deliveries WHERE hook = ? AND delivery = ?`, d.hook, d.delivery).Scan(&dup)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var one int
		err = tx.QueryRow(`SELECT 1 FROM webhooks WHERE name = ? AND job = ?`+tx.keyShare(), d.hook, d.job).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("no webhook %q", d.hook)
		}
		if err != nil {
			return err
		}
		if err := jobVisible(tx, p, d.job); err != nil {
			return err
		}
		if q, err = queueRuns(tx, d.job, "webhook", d.now, queueOpts{maxQueued: d.maxQueued}); err != nil {
			return err
		}
		for _, id := range q.ids {
			if _, err := tx.Exec(`UPDATE runs SET env = ? WHERE id = ?`, d.env, id); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`INSERT INTO webhook_deliveries(hook, delivery, run, received) VALUES (?,?,?,?)`, d.hook, d.delivery, q.ids[0], ns(d.now)); err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE webhooks SET accepted = accepted + 1, last_run = ? WHERE name = ?`, q.ids[0], d.hook)
		return err
	})
	return q, dup, err
}

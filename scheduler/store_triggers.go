package scheduler

import (
	"context"
	"errors"

	"github.com/kiln-build/kiln/api"
)

// errTriggerFired is queueGraph's answer to a trigger whose run already
// exists (a run of the job with the same cause): a trigger fired again,
// after a crash or by another replica, executes nothing.
var errTriggerFired = errors.New("trigger already fired")

// triggerFired reports whether job has a run that cause executed (inside
// queueGraph's transaction; the unique index runs_trigger_cause also
// refuses a second one).
func triggerFired(tx *wtx, job, cause string) (bool, error) {
	var n int
	err := tx.QueryRow(`SELECT count(*) FROM runs WHERE job = ? AND trigger_cause = ?`, job, cause).Scan(&n)
	return n > 0, err
}

// pendingTrigger is a succeeded run whose success triggers may not have
// been fired (the server stopped between its result and them).
type pendingTrigger struct {
	id  int64
	job string
}

// pendingTriggers lists the succeeded runs whose triggers are not marked
// fired, oldest first.
func (s *store) pendingTriggers(ctx context.Context) ([]pendingTrigger, error) {
	rows, err := s.query(ctx, `SELECT id, job FROM runs WHERE triggers_fired = 0 AND state = ? AND kind <> ? ORDER BY id`,
		api.StateSucceeded, api.KindDiffoscope)
	return collect(rows, err, func(row rowScanner) (pendingTrigger, error) {
		var p pendingTrigger
		err := row.Scan(&p.id, &p.job)
		return p, err
	})
}

// markTriggersFired records that run id's success triggers were fired
// (or that it has none to fire).
func (s *store) markTriggersFired(ctx context.Context, id int64) error {
	return s.writeOne(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE runs SET triggers_fired = 1 WHERE id = ? AND triggers_fired = 0`, id)
		return err
	})
}

// pendingImageTrigger is a published image version whose "image:NAME"
// triggers may not have been fired.
type pendingImageTrigger struct {
	name    string
	version int64
}

// pendingImageTriggers lists the image versions whose triggers are not
// marked fired, oldest first.
func (s *store) pendingImageTriggers(ctx context.Context) ([]pendingImageTrigger, error) {
	rows, err := s.query(ctx, `SELECT name, version FROM image_versions WHERE triggers_fired = 0 ORDER BY created, name, version`)
	return collect(rows, err, func(row rowScanner) (pendingImageTrigger, error) {
		var p pendingImageTrigger
		err := row.Scan(&p.name, &p.version)
		return p, err
	})
}

// markImageTriggersFired records that image version name:version's
// triggers were fired.
func (s *store) markImageTriggersFired(ctx context.Context, name string, version int64) error {
	return s.writeOne(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE image_versions SET triggers_fired = 1 WHERE name = ? AND version = ? AND triggers_fired = 0`, name, version)
		return err
	})
}

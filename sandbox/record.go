package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/durable"
)

// runRecord is what a started run keeps in its directory for a process
// that comes after this one: which clone the run is on and which sandbox
// runs it, so that a restarted worker can reattach to it and Reap leaves
// both alone while the run is kept. Launch (cold or warm) writes it before
// anything can outlive the process; reattach and Reap read it.
type runRecord struct {
	// Version is recordVersion when written. A record of a newer version
	// may name more than this kiln knows of: it is not used (see
	// readRecord).
	Version  int    `json:"version"`
	Snapshot string `json:"snapshot"` // "image@version" the clone was made of
	Clone    string `json:"clone"`    // the clone's id: the run's key, or a warm clone's
	Sandbox  string `json:"sandbox"`  // the sandbox's name: the run's key, or a warm task's
}

const (
	recordVersion = 1
	recordFile    = "run.json"
	// legacyRecordFile is where kiln before recordVersion kept the same
	// facts as text: the snapshot, the clone and (warm tasks only) the
	// sandbox, one a line. It is still read, so that a worker upgraded
	// while runs go on reattaches to them.
	legacyRecordFile = "clone"
)

// errNoRecord: the run has no record (it never got as far as a clone).
var errNoRecord = errors.New("no run record")

// writeRecord replaces the record in the run directory dir. A crash of
// the process leaves the old record or the new one whole; after a reboot
// nothing it names still runs, so it is not synced.
func writeRecord(dir string, rec runRecord) error {
	rec.Version = recordVersion
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return durable.Replace(filepath.Join(dir, recordFile), append(data, '\n'), 0o600)
}

// removeRecord removes the record of dir, in both shapes. Idempotent.
func removeRecord(dir string) error {
	var errs []error
	for _, f := range []string{recordFile, legacyRecordFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readRecord reads the record of the run whose key is key from its
// directory dir, in either shape (a legacy record without a sandbox line
// names the run's key). A run without a record gets an error wrapping
// errNoRecord. A record that cannot be trusted whole gets an error and no
// fields: one that does not parse, names an invalid id (errdefs.ErrInvalid), or
// is of a newer version than this kiln's (errdefs.ErrUnsupported), which may name
// more that a reaper must leave alone, or has a field this kiln does not
// know (errdefs.ErrInvalid), which may. A field that names something to spare
// therefore comes with a new version.
func readRecord(dir, key string) (runRecord, error) {
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	legacy := errors.Is(err, os.ErrNotExist)
	if legacy {
		data, err = os.ReadFile(filepath.Join(dir, legacyRecordFile))
	}
	if errors.Is(err, os.ErrNotExist) {
		return runRecord{}, fmt.Errorf("run %s: %w", key, errNoRecord)
	}
	if err != nil {
		return runRecord{}, fmt.Errorf("run record: %w", err)
	}
	var rec runRecord
	if legacy {
		rec, err = parseLegacyRecord(data, key)
	} else {
		rec, err = parseRecord(data)
	}
	if err != nil {
		return runRecord{}, fmt.Errorf("run record of %s: %w", key, err)
	}
	return rec, nil
}

func parseRecord(data []byte) (runRecord, error) {
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return runRecord{}, fmt.Errorf("%w: %w", errdefs.ErrInvalid, err)
	}
	switch {
	case v.Version > recordVersion:
		return runRecord{}, fmt.Errorf("version %d is newer than this kiln's (%d): %w", v.Version, recordVersion, errdefs.ErrUnsupported)
	case v.Version < 1:
		return runRecord{}, fmt.Errorf("version %d: %w", v.Version, errdefs.ErrInvalid)
	}
	var rec runRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	// A field this kiln does not know may name something to spare.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return runRecord{}, fmt.Errorf("%w: %w", errdefs.ErrInvalid, err)
	}
	if err := rec.validate(); err != nil {
		return runRecord{}, err
	}
	return rec, nil
}

// parseLegacyRecord reads the text shape: two lines (a cold clone, whose
// sandbox is the run's key) or three (a warm task's).
func parseLegacyRecord(data []byte, key string) (runRecord, error) {
	lines := strings.Split(string(bytes.TrimSpace(data)), "\n")
	if len(lines) < 2 || len(lines) > 3 {
		return runRecord{}, fmt.Errorf("%q: want 2 or 3 lines: %w", data, errdefs.ErrInvalid)
	}
	rec := runRecord{Snapshot: lines[0], Clone: lines[1], Sandbox: key}
	if len(lines) == 3 {
		rec.Sandbox = lines[2]
	}
	if err := rec.validate(); err != nil {
		return runRecord{}, err
	}
	return rec, nil
}

func (rec runRecord) validate() error {
	if rec.Snapshot == "" {
		return fmt.Errorf("no snapshot: %w", errdefs.ErrInvalid)
	}
	for _, id := range []string{rec.Clone, rec.Sandbox} {
		if err := validRunID(id); err != nil {
			return err
		}
	}
	return nil
}

package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on server-held image versions (docs/images-server.md)
// and on the pins and phases of the runs that use them.

const imageCols = `name, version, arch, os, method, recipe, tar_digest, tar_size, blob, blob_size, created`

func scanImage(sc rowScanner) (api.ImageVersion, error) {
	var v api.ImageVersion
	var created sql.NullInt64
	err := sc.Scan(&v.Name, &v.Version, &v.Arch, &v.OS, &v.Method, &v.Recipe, &v.TarDigest, &v.TarSize, &v.Blob, &v.BlobSize, &created)
	v.Created = fromNS(created)
	return v, err
}

// publishImage records v (checked by the caller) at now: version 0 is
// the one after the last the name ever had. A version of the same name
// with the same TarDigest makes the publish a no-op (existing is true,
// and the stored version is returned); another digest under an existing
// version, or a version number once removed, is a conflict.
func (s *store) publishImage(ctx context.Context, asked api.ImageVersion, now time.Time) (out api.ImageVersion, existing bool, err error) {
	err = s.write(ctx, func(tx *wtx) error {
		// The write may run again (a serialization conflict on
		// PostgreSQL): it starts from the request each time.
		v := asked
		existing = false
		same, err := scanImage(tx.QueryRow(`SELECT `+imageCols+` FROM image_versions WHERE name = ? AND tar_digest = ? ORDER BY version DESC LIMIT 1`, v.Name, v.TarDigest))
		switch {
		case err == nil && (v.Version == 0 || v.Version == same.Version):
			out, existing = same, true
			return nil
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		var last int
		err = tx.QueryRow(`SELECT last_version FROM image_names WHERE name = ?`, v.Name).Scan(&last)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if v.Version == 0 {
			v.Version = last + 1
		} else if v.Version <= last {
			held, err := scanImage(tx.QueryRow(`SELECT `+imageCols+` FROM image_versions WHERE name = ? AND version = ?`, v.Name, v.Version))
			switch {
			case err == nil:
				return errorf(http.StatusConflict, api.CodeExists, "image %s exists with another digest (%s, not %s); publish as a new version",
					held.Ref(), held.TarDigest, v.TarDigest)
			case errors.Is(err, sql.ErrNoRows):
				return errorf(http.StatusConflict, api.CodeExists, "image %s was removed, and version numbers are not reused (the next is %d)", v.Ref(), last+1)
			default:
				return err
			}
		}
		v.Created = now.UTC()
		if _, err := tx.Exec(`INSERT INTO image_versions(`+imageCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
			v.Name, v.Version, v.Arch, v.OS, v.Method, v.Recipe, v.TarDigest, v.TarSize, v.Blob, v.BlobSize, ns(now)); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO image_names(name, last_version) VALUES (?, ?)
			ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version`, v.Name, v.Version); err != nil {
			return err
		}
		out = v
		out.Created = fromNS(sql.NullInt64{Int64: ns(now), Valid: true})
		return nil
	})
	return out, existing, err
}

// imageVersions lists the versions of image name ("": of every image), by
// name then version.
func (s *store) imageVersions(ctx context.Context, name string) ([]api.ImageVersion, error) {
	rows, err := s.query(ctx, `SELECT `+imageCols+` FROM image_versions WHERE ? = '' OR name = ? ORDER BY name, version`, name, name)
	return collect(rows, err, scanImage)
}

// imageVersion reads version of image name (0: the newest); not found is
// a not-found error.
func (s *store) imageVersion(ctx context.Context, name string, version int) (api.ImageVersion, error) {
	v, err := scanImage(s.queryRow(ctx, `SELECT `+imageCols+` FROM image_versions WHERE name = ? AND (? = 0 OR version = ?)
		ORDER BY version DESC LIMIT 1`, name, version, version))
	if errors.Is(err, sql.ErrNoRows) {
		if version == 0 {
			return v, notFound("the server holds no image %q", name)
		}
		return v, notFound("the server holds no image %s@%d", name, version)
	}
	return v, err
}

// removeImageVersion deletes version of image name, unless queued, leased
// or running runs are pinned to it (a conflict naming some of them).
func (s *store) removeImageVersion(ctx context.Context, name string, version int) error {
	ref := name + "@" + strconv.Itoa(version)
	return s.write(ctx, func(tx *wtx) error {
		rows, err := tx.Query(`SELECT id FROM runs WHERE image = ? AND state IN (?, ?, ?) ORDER BY id LIMIT 5`,
			ref, api.StateQueued, api.StateLeased, api.StateRunning)
		ids, err := collect(rows, err, func(row rowScanner) (string, error) {
			var id int64
			err := row.Scan(&id)
			return itoa(id), err
		})
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "image %s is pinned by runs that have not ended (%s); cancel them or wait", ref, strings.Join(ids, ", "))
		}
		res, err := tx.Exec(`DELETE FROM image_versions WHERE name = ? AND version = ?`, name, version)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return notFound("the server holds no image %s", ref)
		}
		return nil
	})
}

// pinFor is the statement part that picks the image version a run of a
// job naming image NAME or NAME@VERSION, for arch ("": any), is pinned
// to: that version, or the newest of that name for the arch. It selects
// no row when the server holds none (the job then uses a host's own
// image). Its arguments are pinArgs'.
const pinFor = `SELECT name, version, tar_digest FROM image_versions
	WHERE name = ? AND (? = 0 OR version = ?) AND (? = '' OR arch = ?) ORDER BY version DESC LIMIT 1`

// pinArgs are pinFor's arguments for a job's image reference and arch;
// ok is false for a reference no server-held version can match (a
// version that is not a number).
func pinArgs(image, arch string) (args []any, ok bool) {
	name, ver, pinned := strings.Cut(image, "@")
	n := 0
	if pinned {
		var err error
		if n, err = strconv.Atoi(ver); err != nil || n <= 0 {
			return nil, false
		}
	}
	return []any{name, n, n, arch, arch}, true
}

// pinRun resolves, inside tx, the version a run of a job naming image
// for arch is pinned to: ref ("" for none: a host-local image) and digest.
func pinRun(tx *wtx, image, arch string) (ref, digest string, err error) {
	args, ok := pinArgs(image, arch)
	if !ok {
		return "", "", nil
	}
	var name string
	var version int
	err = tx.QueryRow(pinFor, args...).Scan(&name, &version, &digest)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	return name + "@" + strconv.Itoa(version), digest, nil
}

// setRunPhase records what host, holding run id's lease with fence, says
// the run is doing (text; "" when its script runs); false when the lease
// is not held.
func (s *store) setRunPhase(ctx context.Context, host string, id int64, fence, text string) (bool, error) {
	var n int64
	err := s.write(ctx, func(tx *wtx) error {
		res, err := tx.Exec(`UPDATE runs SET phase = ? WHERE id = ? AND host = ? AND fence = ? AND state IN (?, ?)`,
			text, id, host, fence, api.StateLeased, api.StateRunning)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n > 0, err
}

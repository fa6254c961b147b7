package scheduler

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
)

// The store's operations on package repositories (repos.go has the
// logic). A repository's served index set is the repo_files rows of its
// current generation; commitPublication writes a new set and switches
// repos.generation in one transaction.

// storedRepo is a repository row, its private key included.
type storedRepo struct {
	api.Repo
	privateKey, publicKey string
}

// repoEntry is one package row: the wire form and the control fields.
type repoEntry struct {
	api.RepoPackage
	control string // JSON of the aptrepo.Package
	runID   int64  // 0: none
}

// repoFile is one file of an index set or the pool.
type repoFile struct {
	path, sha256 string
	size         int64
}

// errGenerationMoved: another publish switched the repository's index set
// since this one read it (another replica): read again and retry.
var errGenerationMoved = errors.New("repository generation moved")

func (s *store) createRepo(ctx context.Context, r *storedRepo, files []repoFile, now time.Time) error {
	comps, _ := json.Marshal(r.Components)
	arches, _ := json.Marshal(r.Arches)
	pubs, _ := json.Marshal(r.Publishers)
	return s.write(ctx, func(tx *wtx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM repos WHERE name = ?`, r.Name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errorf(http.StatusConflict, api.CodeExists, "repository %q exists", r.Name)
		}
		pub := 0
		if r.Public {
			pub = 1
		}
		if _, err := tx.Exec(`INSERT INTO repos(name, type, suite, components, arches, publishers, public, private_key, public_key, fingerprint, created, generation, published)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)`, r.Name, r.Type, r.Suite, string(comps), string(arches), string(pubs), pub, r.privateKey, r.publicKey, r.Fingerprint, ns(now), ns(now)); err != nil {
			return err
		}
		return insertRepoFiles(tx, r.Name, 1, files)
	})
}

func insertRepoFiles(tx *wtx, repo string, gen int64, files []repoFile) error {
	for _, f := range files {
		if _, err := tx.Exec(`INSERT INTO repo_files(repo, generation, path, sha256, size) VALUES (?,?,?,?,?)`, repo, gen, f.path, f.sha256, f.size); err != nil {
			return err
		}
	}
	return nil
}

const repoCols = `name, type, suite, components, arches, publishers, public, fingerprint, created, generation, published, private_key, public_key`

func scanRepo(row rowScanner) (*storedRepo, error) {
	r := &storedRepo{}
	var comps, arches, pubs string
	var public int
	var created, published sql.NullInt64
	if err := row.Scan(&r.Name, &r.Type, &r.Suite, &comps, &arches, &pubs, &public, &r.Fingerprint, &created, &r.Generation, &published, &r.privateKey, &r.publicKey); err != nil {
		return nil, err
	}
	r.Public = public != 0
	r.Created, r.Published = fromNS(created), fromNS(published)
	if err := errors.Join(json.Unmarshal([]byte(comps), &r.Components), json.Unmarshal([]byte(arches), &r.Arches), json.Unmarshal([]byte(pubs), &r.Publishers)); err != nil {
		return nil, err
	}
	return r, nil
}

// repo reads repository name (a not-found error for none).
func (s *store) repo(ctx context.Context, name string) (*storedRepo, error) {
	r, err := scanRepo(s.queryRow(ctx, `SELECT `+repoCols+` FROM repos WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("no repository %q", name)
	}
	return r, err
}

func (s *store) repos(ctx context.Context) ([]api.Repo, error) {
	rows, err := s.query(ctx, `SELECT `+repoCols+` FROM repos ORDER BY name`)
	return collect(rows, err, func(row rowScanner) (api.Repo, error) {
		r, err := scanRepo(row)
		if err != nil {
			return api.Repo{}, err
		}
		return r.Repo, nil
	})
}

// repoPackages lists a repository's packages.
func (s *store) repoPackages(ctx context.Context, repo string) ([]repoEntry, error) {
	rows, err := s.query(ctx, `SELECT package, version, arch, component, filename, sha256, size, control, coalesce(run, 0), added
		FROM repo_packages WHERE repo = ? ORDER BY package, version, arch`, repo)
	return collect(rows, err, func(row rowScanner) (repoEntry, error) {
		var e repoEntry
		var run, added int64
		err := row.Scan(&e.Name, &e.Version, &e.Arch, &e.Component, &e.Filename, &e.SHA256, &e.Size, &e.control, &run, &added)
		if e.runID = run; run != 0 {
			e.Run = itoa(run)
		}
		e.Added = time.Unix(0, added).UTC()
		return e, err
	})
}

// repoServed finds the file a reader asked for under the repository's
// root, in one query so that it is of one index set: a file of the
// current generation, a by-hash file of the sets kept (dir is the by-hash
// directory's parent, "dists/S/C/binary-A/"), or a pool file.
func (s *store) repoServed(ctx context.Context, repo, path, byHashDir, byHashSHA string) (sha string, size int64, ok bool, err error) {
	var row *sql.Row
	switch {
	case byHashSHA != "":
		// The digest is the key; the path only has to lie in the same
		// directory (a Packages.gz and a Packages.xz never share one).
		rows, err := s.query(ctx, `SELECT path, size FROM repo_files WHERE repo = ? AND sha256 = ?`, repo, byHashSHA)
		if err != nil {
			return "", 0, false, err
		}
		defer rows.Close()
		for rows.Next() {
			var p string
			if err := rows.Scan(&p, &size); err != nil {
				return "", 0, false, err
			}
			if strings.HasPrefix(p, byHashDir) && !strings.Contains(p[len(byHashDir):], "/") {
				return byHashSHA, size, true, nil
			}
		}
		return "", 0, false, rows.Err()
	case strings.HasPrefix(path, "pool/"):
		row = s.queryRow(ctx, `SELECT sha256, size FROM repo_pool WHERE repo = ? AND path = ?`, repo, path)
	default:
		row = s.queryRow(ctx, `SELECT f.sha256, f.size FROM repo_files f JOIN repos r ON r.name = f.repo AND r.generation = f.generation
			WHERE f.repo = ? AND f.path = ?`, repo, path)
	}
	err = row.Scan(&sha, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, false, nil
	}
	return sha, size, err == nil, err
}

// publication is one switch of a repository to a new index set: the
// packages and pool files it adds and removes, the new set, and the
// runs' publications it records.
type publication struct {
	repo       string
	generation int64 // the generation it was built on
	add        []repoEntry
	pool       []repoFile // pool files it adds (the packages' and others)
	remove     []api.RepoPackage
	files      []repoFile
	records    []runPublication
	now        time.Time
}

// commitPublication applies p if the repository is still at the
// generation p was built on (errGenerationMoved otherwise), and keeps the
// index sets of the new generation and the one before it. Adding a
// package whose name, version and arch are there already is refused
// (errVersionTaken) unless the bytes are the same.
func (s *store) commitPublication(ctx context.Context, p *publication) error {
	return s.write(ctx, func(tx *wtx) error {
		var gen int64
		if err := tx.QueryRow(`SELECT generation FROM repos WHERE name = ?`+tx.forUpdate(), p.repo).Scan(&gen); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return notFound("no repository %q", p.repo)
			}
			return err
		}
		if gen != p.generation {
			return errGenerationMoved
		}
		for _, e := range p.add {
			var run any
			if e.runID != 0 {
				run = e.runID
			}
			if _, err := tx.Exec(`INSERT INTO repo_packages(repo, package, version, arch, component, filename, sha256, size, control, run, added)
				VALUES (?,?,?,?,?,?,?,?,?,?,?)`, p.repo, e.Name, e.Version, e.Arch, e.Component, e.Filename, e.SHA256, e.Size, e.control, run, ns(p.now)); err != nil {
				return err
			}
		}
		for _, f := range p.pool {
			if _, err := tx.Exec(`INSERT INTO repo_pool(repo, path, sha256, size) VALUES (?,?,?,?)
				ON CONFLICT (repo, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size`, p.repo, f.path, f.sha256, f.size); err != nil {
				return err
			}
		}
		for _, r := range p.remove {
			if _, err := tx.Exec(`DELETE FROM repo_packages WHERE repo = ? AND package = ? AND version = ? AND arch = ?`, p.repo, r.Name, r.Version, r.Arch); err != nil {
				return err
			}
			if _, err := tx.Exec(`DELETE FROM repo_pool WHERE repo = ? AND path = ?`, p.repo, r.Filename); err != nil {
				return err
			}
		}
		if err := insertRepoFiles(tx, p.repo, gen+1, p.files); err != nil {
			return err
		}
		if _, err := tx.Exec(`DELETE FROM repo_files WHERE repo = ? AND generation < ?`, p.repo, gen); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE repos SET generation = ?, published = ? WHERE name = ?`, gen+1, ns(p.now), p.repo); err != nil {
			return err
		}
		return insertPublications(tx, p.records)
	})
}

// runPublication is a Publication with its run's id.
type runPublication struct {
	api.Publication
	runID int64
}

func insertPublications(tx *wtx, records []runPublication) error {
	for _, r := range records {
		pkgs, _ := json.Marshal(r.Packages)
		if _, err := tx.Exec(`INSERT INTO run_publications(run, repo, state, packages, detail, created) VALUES (?,?,?,?,?,?)
			ON CONFLICT (run, repo) DO UPDATE SET state = excluded.state, packages = excluded.packages, detail = excluded.detail, created = excluded.created`,
			r.runID, r.Repo, r.State, string(pkgs), r.Detail, ns(r.Time)); err != nil {
			return err
		}
	}
	return nil
}

// recordPublications stores what became of runs' packages when no index
// set changed (unchanged, refused, failed).
func (s *store) recordPublications(ctx context.Context, records []runPublication) error {
	return s.write(ctx, func(tx *wtx) error { return insertPublications(tx, records) })
}

// publications lists the publications of the given runs.
func (s *store) publications(ctx context.Context, runs ...int64) ([]api.Publication, error) {
	var out []api.Publication
	for _, id := range runs {
		rows, err := s.query(ctx, `SELECT run, repo, state, packages, detail, created FROM run_publications WHERE run = ? ORDER BY repo`, id)
		ps, err := collect(rows, err, func(row rowScanner) (api.Publication, error) {
			var p api.Publication
			var run, created int64
			var pkgs string
			if err := row.Scan(&run, &p.Repo, &p.State, &pkgs, &p.Detail, &created); err != nil {
				return p, err
			}
			p.Run, p.Time = itoa(run), time.Unix(0, created).UTC()
			return p, json.Unmarshal([]byte(pkgs), &p.Packages)
		})
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

// removeRepo deletes a repository and everything of it; its blobs stay
// in the blob store until nothing references them.
func (s *store) removeRepo(ctx context.Context, name string) error {
	return s.write(ctx, func(tx *wtx) error {
		res, err := tx.Exec(`DELETE FROM repos WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err == nil {
				err = notFound("no repository %q", name)
			}
			return err
		}
		for _, q := range []string{`DELETE FROM repo_packages WHERE repo = ?`, `DELETE FROM repo_pool WHERE repo = ?`, `DELETE FROM repo_files WHERE repo = ?`} {
			if _, err := tx.Exec(q, name); err != nil {
				return err
			}
		}
		return nil
	})
}

// repoBlobs lists the blobs repository repo references ("": any
// repository), pool files and the index sets kept: what blob retention
// must keep (repoRefs).
func (s *store) repoBlobs(ctx context.Context, repo string) ([]string, error) {
	var out []string
	err := s.repoBlobsOf(ctx, repo, func(sha string) { out = append(out, sha) })
	return out, err
}

// repoRefs is the retention sweep's query of the blobs repositories
// reference (liveBlobQueries).
func (s *store) repoRefs(ctx context.Context, _ time.Time, yield func(blobRef)) error {
	return s.repoBlobsOf(ctx, "", func(sha string) { yield(blobRef{sha: sha}) })
}

func (s *store) repoBlobsOf(ctx context.Context, repo string, yield func(string)) error {
	rows, err := s.query(ctx, `SELECT sha256 FROM repo_pool WHERE ? = '' OR repo = ?
		UNION SELECT sha256 FROM repo_files WHERE ? = '' OR repo = ? ORDER BY 1`, repo, repo, repo, repo)
	return yieldShas(rows, err, func(r blobRef) { yield(r.sha) })
}

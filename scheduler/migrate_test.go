package scheduler_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestMigrateFromPreviousVersion: a database of both backends made with
// the migrations before ownership (up to 004) and holding a job, a run and
// a client token is migrated by a real server to the latest version: the
// job and run belong to the admin, the token to no group, a job removed
// and added again starts at the revision made when it was added again, the
// server has its identity, and every migration is recorded once.
func TestMigrateFromPreviousVersion(t *testing.T) {
	for _, tc := range []struct {
		name, dir, ph string
		// db opens the empty database; url is the server's store url.
		db func(t *testing.T, dataDir string) (db *sql.DB, url string)
	}{
		{"sqlite", "migrations", "?", func(t *testing.T, dataDir string) (*sql.DB, string) {
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "kiln.db"))
			if err != nil {
				t.Fatal(err)
			}
			return db, ""
		}},
		{"postgres", "migrations/postgres", "$1", func(t *testing.T, _ string) (*sql.DB, string) {
			url := testsupport.StartPostgres(t).NewDatabase()
			db, err := sql.Open("pgx", url)
			if err != nil {
				t.Fatal(err)
			}
			return db, url
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			db, url := tc.db(t, dataDir)
			if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			for v, name := range []string{"001_init.sql", "002_reproduce.sql", "003_diffoscope.sql", "004_client_tokens.sql"} {
				body, err := os.ReadFile(filepath.Join(tc.dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.Exec(string(body)); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if _, err := db.Exec(`INSERT INTO schema_migrations(version) VALUES (`+tc.ph+`)`, v+1); err != nil {
					t.Fatal(err)
				}
			}
			for _, q := range []string{
				`INSERT INTO jobs(name, revision, created, updated) VALUES ('old', 1, 0, 0)`,
				`INSERT INTO job_revisions(name, revision, spec, created) VALUES ('old', 1, '{}', 0)`,
				`INSERT INTO runs(job, revision, state, trigger_kind, created, queued_at) VALUES ('old', 1, 'succeeded', 'execute', 0, 0)`,
				`INSERT INTO tokens(hash, kind, name, created) VALUES ('h', 'client', 'ci', 0)`,
				// Removed (revisions 1, 2) and added again at 100 (3, 4).
				`INSERT INTO jobs(name, revision, created, updated) VALUES ('again', 4, 100, 200)`,
				`INSERT INTO job_revisions(name, revision, spec, created) VALUES ('again', 1, '{}', 0), ('again', 2, '{}', 50), ('again', 3, '{}', 100), ('again', 4, '{}', 200)`,
			} {
				if _, err := db.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			db.Close()

			srv := testsupport.StartServerOn(t, url, dataDir)
			got := srv.DB()
			var jobOwner, runOwner, id string
			var group sql.NullString
			var first, firstAgain int
			if err := got.QueryRow(`SELECT (SELECT first_revision FROM jobs WHERE name = 'old'), (SELECT first_revision FROM jobs WHERE name = 'again')`).Scan(&first, &firstAgain); err != nil {
				t.Fatal(err)
			}
			if first != 1 || firstAgain != 3 {
				t.Fatalf("after migration: jobs start at revision %d and %d, want 1 and 3 (the job added again)", first, firstAgain)
			}
			if err := got.QueryRow(`SELECT j.owner, r.owner FROM jobs j JOIN runs r ON r.job = j.name`).Scan(&jobOwner, &runOwner); err != nil {
				t.Fatal(err)
			}
			if jobOwner != "admin" || runOwner != "admin" {
				t.Fatalf("after migration: job owner %q, run owner %q, want admin", jobOwner, runOwner)
			}
			if err := got.QueryRow(`SELECT owner_group FROM tokens WHERE name = 'ci'`).Scan(&group); err != nil || group.Valid {
				t.Fatalf("an existing client token got group %v (%v), want none", group, err)
			}
			if err := got.QueryRow(`SELECT value FROM server_meta WHERE key = 'id'`).Scan(&id); err != nil || id == "" {
				t.Fatalf("server id %q (%v)", id, err)
			}
			all, _ := filepath.Glob(filepath.Join(tc.dir, "*.sql"))
			var n, last int
			if err := got.QueryRow(`SELECT count(*), max(version) FROM schema_migrations`).Scan(&n, &last); err != nil {
				t.Fatal(err)
			}
			// Migration numbers are handed out ahead of merges, so the
			// files may skip a number until the others land.
			highest := 0
			for _, f := range all {
				v, _ := strconv.Atoi(strings.SplitN(filepath.Base(f), "_", 2)[0])
				highest = max(highest, v)
			}
			if n != len(all) || last != highest {
				t.Fatalf("schema_migrations: %d rows up to %d, want %d up to %d", n, last, len(all), highest)
			}
			if _, err := srv.Client().ListJobs(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMigrationsMatch: both backends have the same migration versions,
// so that a schema change is never made for one only.
func TestMigrationsMatch(t *testing.T) {
	lite, _ := filepath.Glob("migrations/*.sql")
	pg, _ := filepath.Glob("migrations/postgres/*.sql")
	if len(lite) != len(pg) || len(lite) == 0 {
		t.Fatalf("%d SQLite migrations, %d PostgreSQL ones", len(lite), len(pg))
	}
	for i := range lite {
		if filepath.Base(lite[i]) != filepath.Base(pg[i]) {
			t.Fatalf("migration %s has no PostgreSQL twin (%s)", lite[i], pg[i])
		}
	}
}

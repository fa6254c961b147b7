package scheduler

import (
	"context"
	"database/sql"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestOwnershipMigration: a database made before jobs had owners (schema
// version 4) with a job and a run opens with both owned by the admin, on
// both backends (the migrations of each, from the previous version).
func TestOwnershipMigration(t *testing.T) {
	for _, tc := range []struct {
		name string
		// open returns the database made empty, the migrations' dir, its
		// placeholder and a function opening it as the server does.
		open func(t *testing.T) (db *sql.DB, dir, ph string, reopen func() (*store, error))
	}{
		{"sqlite", func(t *testing.T) (*sql.DB, string, string, func() (*store, error)) {
			path := filepath.Join(t.TempDir(), "kiln.db")
			db, err := sql.Open("sqlite", "file:"+path)
			if err != nil {
				t.Fatal(err)
			}
			return db, "migrations", "?", func() (*store, error) { return openStore(path, "full") }
		}},
		{"postgres", func(t *testing.T) (*sql.DB, string, string, func() (*store, error)) {
			url := testsupport.StartPostgres(t).NewDatabase()
			db, err := sql.Open("pgx", url)
			if err != nil {
				t.Fatal(err)
			}
			return db, "migrations/postgres", "$1", func() (*store, error) { return openPGStore(context.Background(), url) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, dir, ph, reopen := tc.open(t)
			if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			for v, name := range []string{"001_init.sql", "002_reproduce.sql", "003_diffoscope.sql", "004_client_tokens.sql"} {
				body, err := fs.ReadFile(migrations, dir+"/"+name)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.Exec(string(body)); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if _, err := db.Exec(`INSERT INTO schema_migrations(version) VALUES (`+ph+`)`, v+1); err != nil {
					t.Fatal(err)
				}
			}
			for _, q := range []string{
				`INSERT INTO jobs(name, revision, created, updated) VALUES ('old', 1, 0, 0)`,
				`INSERT INTO job_revisions(name, revision, spec, created) VALUES ('old', 1, '{}', 0)`,
				`INSERT INTO runs(job, revision, state, trigger_kind, created, queued_at) VALUES ('old', 1, 'succeeded', 'execute', 0, 0)`,
				`INSERT INTO tokens(hash, kind, name, created) VALUES ('h', 'client', 'ci', 0)`,
			} {
				if _, err := db.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			db.Close()

			st, err := reopen()
			if err != nil {
				t.Fatal(err)
			}
			defer st.close()
			var jobOwner, runOwner string
			var group sql.NullString
			if err := st.rd.QueryRow(`SELECT j.owner, r.owner FROM jobs j JOIN runs r ON r.job = j.name`).Scan(&jobOwner, &runOwner); err != nil {
				t.Fatal(err)
			}
			if jobOwner != ownerAdmin || runOwner != ownerAdmin {
				t.Fatalf("after migration: job owner %q, run owner %q, want %q", jobOwner, runOwner, ownerAdmin)
			}
			if err := st.rd.QueryRow(`SELECT owner_group FROM tokens WHERE name = 'ci'`).Scan(&group); err != nil || group.Valid {
				t.Fatalf("an existing client token got group %v (%v), want none", group, err)
			}
			// Every migration is recorded once: opening again applies none.
			var n, max int
			if err := st.rd.QueryRow(`SELECT count(*), max(version) FROM schema_migrations`).Scan(&n, &max); err != nil {
				t.Fatal(err)
			}
			all, _ := fs.Glob(migrations, dir+"/*.sql")
			if n != len(all) || max != len(all) {
				t.Fatalf("schema_migrations: %d rows up to %d, want %d", n, max, len(all))
			}
		})
	}
}

// TestMigrationsMatch: both backends have the same migration versions,
// so that a schema change is never made for one only.
func TestMigrationsMatch(t *testing.T) {
	lite, _ := fs.Glob(migrations, "migrations/*.sql")
	pg, _ := fs.Glob(migrations, "migrations/postgres/*.sql")
	if len(lite) != len(pg) || len(lite) == 0 {
		t.Fatalf("%d SQLite migrations, %d PostgreSQL ones", len(lite), len(pg))
	}
	for i := range lite {
		if filepath.Base(lite[i]) != filepath.Base(pg[i]) {
			t.Fatalf("migration %s has no PostgreSQL twin (%s)", lite[i], pg[i])
		}
	}
}

package scheduler

import (
	"database/sql"
	"io/fs"
	"path/filepath"
	"testing"
)

// TestOwnershipMigration: a database made before jobs had owners (schema
// version 4) with a job and a run opens with both owned by the admin.
func TestOwnershipMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kiln.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	for v, name := range []string{"001_init.sql", "002_reproduce.sql", "003_diffoscope.sql", "004_client_tokens.sql"} {
		body, err := fs.ReadFile(migrations, "migrations/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations(version) VALUES (?)`, v+1); err != nil {
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

	st, err := openStore(path, "full")
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
}

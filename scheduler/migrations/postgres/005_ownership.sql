-- Ownership of jobs (issue 11): every job, run and reproduce group has an
-- owner, "admin", "token:NAME" (a client token) or "group:NAME" (the client
-- tokens made with that group). Jobs stored before belong to the admin.
ALTER TABLE tokens ADD COLUMN owner_group TEXT;   -- client: the group whose jobs it shares
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE groups ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
CREATE INDEX runs_owner ON runs(owner, id);
CREATE INDEX jobs_owner ON jobs(owner, name);

-- Blobs a client owner uploaded itself (the bytes received and verified),
-- which it may download and name as job inputs. Artifacts of its runs are
-- its through the runs.
CREATE TABLE blob_grants (
	owner   TEXT NOT NULL,
	sha256  TEXT NOT NULL,
	created BIGINT NOT NULL,
	PRIMARY KEY (owner, sha256)
);

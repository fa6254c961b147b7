-- Signed provenance (issue 28, docs/publishing.md). Every key a host
-- enrolled with is kept: a removed host's key is marked revoked from the
-- removal on, and still verifies runs that finished before.
CREATE TABLE host_keys (
	key_id     TEXT PRIMARY KEY,
	host       TEXT NOT NULL,
	public_key TEXT NOT NULL,
	created    INTEGER NOT NULL,
	revoked    INTEGER
);
CREATE INDEX host_keys_host ON host_keys(host);
-- A run's DSSE envelope, as its worker sent it with the result.
CREATE TABLE run_attestations (
	run      INTEGER PRIMARY KEY,
	host     TEXT NOT NULL,
	key_id   TEXT NOT NULL,
	envelope TEXT NOT NULL
);

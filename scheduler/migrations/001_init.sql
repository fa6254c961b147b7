-- Times are Unix nanoseconds (UTC).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE tokens (
	hash    TEXT PRIMARY KEY,          -- hex sha256 of the token
	kind    TEXT NOT NULL,             -- admin | enrollment | worker
	host    TEXT,                      -- worker: the host it belongs to
	labels  TEXT NOT NULL DEFAULT '{}',-- enrollment: labels given to the host
	created INTEGER NOT NULL,
	expires INTEGER,                   -- enrollment: after this it is refused
	used    INTEGER NOT NULL DEFAULT 0 -- enrollment: single use
);

CREATE TABLE hosts (
	name      TEXT PRIMARY KEY,
	labels    TEXT NOT NULL DEFAULT '{}',
	facts     TEXT NOT NULL DEFAULT '{}',
	created   INTEGER NOT NULL,
	last_seen INTEGER NOT NULL,
	drained   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE jobs (
	name      TEXT PRIMARY KEY,
	revision  INTEGER NOT NULL,
	schedule  TEXT NOT NULL DEFAULT '',
	next_fire INTEGER,
	created   INTEGER NOT NULL,
	updated   INTEGER NOT NULL
);
CREATE INDEX jobs_next_fire ON jobs(next_fire) WHERE next_fire IS NOT NULL;

-- Revisions outlive their job so that old runs stay explainable.
CREATE TABLE job_revisions (
	name     TEXT NOT NULL,
	revision INTEGER NOT NULL,
	spec     TEXT NOT NULL,
	created  INTEGER NOT NULL,
	PRIMARY KEY (name, revision)
);

CREATE TABLE runs (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	job           TEXT NOT NULL,
	revision      INTEGER NOT NULL,
	state         TEXT NOT NULL,
	attempt       INTEGER NOT NULL DEFAULT 1,
	trigger_kind  TEXT NOT NULL,
	created       INTEGER NOT NULL,
	queued_at     INTEGER NOT NULL,
	host          TEXT,
	fence         TEXT,
	lease_expires INTEGER,
	started       INTEGER,
	finished      INTEGER,
	cancel_asked  INTEGER NOT NULL DEFAULT 0,
	exit_code     INTEGER,
	signal        TEXT NOT NULL DEFAULT '',
	timed_out     INTEGER NOT NULL DEFAULT 0,
	error         TEXT NOT NULL DEFAULT '',
	log_len       INTEGER NOT NULL DEFAULT 0, -- bytes accepted (the worker's offsets)
	log_stored    INTEGER NOT NULL DEFAULT 0  -- bytes kept (capped)
);
CREATE INDEX runs_state ON runs(state, id);
CREATE INDEX runs_job ON runs(job, id);
CREATE INDEX runs_host ON runs(host) WHERE host IS NOT NULL;

CREATE TABLE run_logs (
	run     INTEGER NOT NULL,
	attempt INTEGER NOT NULL,
	off     INTEGER NOT NULL,
	data    BLOB NOT NULL,
	PRIMARY KEY (run, attempt, off)
) WITHOUT ROWID;

CREATE TABLE artifacts (
	run    INTEGER NOT NULL,
	path   TEXT NOT NULL,
	size   INTEGER NOT NULL,
	mode   INTEGER NOT NULL,
	sha256 TEXT NOT NULL,
	PRIMARY KEY (run, path)
) WITHOUT ROWID;

-- Webhooks in and out (issue 30, docs/webhooks.md).
--
-- webhooks: a hook runs job when a request signed with its secret comes
-- to POST /v1/webhooks/{name}. secret is sealed with the data dir's key
-- (AES-256-GCM, base64): a reader of the database alone cannot sign.
-- token_hash is the token that made the hook: the runs are its owner's,
-- and a revoked token's hook runs nothing.
CREATE TABLE webhooks (
	name       TEXT PRIMARY KEY,
	job        TEXT NOT NULL,
	format     TEXT NOT NULL,
	secret     TEXT NOT NULL,
	owner      TEXT NOT NULL,
	token_hash TEXT NOT NULL,
	created    INTEGER NOT NULL,
	accepted   INTEGER NOT NULL DEFAULT 0,
	refused    INTEGER NOT NULL DEFAULT 0,
	last_run   INTEGER
);
-- webhook_deliveries: every delivery id that queued runs, so that a
-- replayed delivery (the sender's retry, or an attacker's copy) runs
-- nothing, also after a restart.
CREATE TABLE webhook_deliveries (
	hook     TEXT NOT NULL,
	delivery TEXT NOT NULL,
	run      INTEGER NOT NULL,
	received INTEGER NOT NULL,
	PRIMARY KEY (hook, delivery)
);
-- env: JSON of the environment a webhook's run gets on top of its job's.
ALTER TABLE runs ADD COLUMN env TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_finished ON runs(finished);

-- notify_outbox: one row per event and target, written before it is
-- sent; a sender claims due rows with a lease (lease_owner, lease_until)
-- so that one replica sends each at a time.
CREATE TABLE notify_outbox (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	run         INTEGER NOT NULL,
	url         TEXT NOT NULL,
	event       TEXT NOT NULL,
	secret_ref  TEXT NOT NULL,
	payload     TEXT NOT NULL,
	state       TEXT NOT NULL,
	tries       INTEGER NOT NULL DEFAULT 0,
	next_try    INTEGER NOT NULL,
	deadline    INTEGER NOT NULL,
	lease_owner TEXT NOT NULL DEFAULT '',
	lease_until INTEGER NOT NULL DEFAULT 0,
	last_error  TEXT NOT NULL DEFAULT '',
	created     INTEGER NOT NULL,
	done        INTEGER,
	UNIQUE (run, url, event)
);
CREATE INDEX notify_outbox_due ON notify_outbox(state, next_try);
CREATE INDEX notify_outbox_run ON notify_outbox(run);
-- notify_mark: how far the catch-up pass has looked at finished runs.
CREATE TABLE notify_mark (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	mark INTEGER NOT NULL
);

-- Reproduce groups (issue 8), host checks and facts kept with runs.
CREATE TABLE groups (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	job               TEXT NOT NULL,
	revision          INTEGER NOT NULL,
	size              INTEGER NOT NULL,
	created           INTEGER NOT NULL,
	source_date_epoch INTEGER NOT NULL,
	verdict           TEXT -- JSON api.Verdict once every member ended
);

ALTER TABLE runs ADD COLUMN grp INTEGER;
ALTER TABLE runs ADD COLUMN member INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN variations TEXT NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN checks TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runs ADD COLUMN snapshot TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN host_facts TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_grp ON runs(grp, id) WHERE grp IS NOT NULL;

CREATE INDEX artifacts_sha256 ON artifacts(sha256);

-- Durable triggers (issue 30, docs/job-file.md "Triggers"): a succeeded
-- run whose success triggers have not all been fired yet keeps
-- triggers_fired = 0, set by the same statement that stores its result
-- (the column's default), so a server stopped between the result and the
-- trigger fires it at its next start (resumeTriggers). A run a trigger
-- executed records what caused it ("run:812"), at most once per job: a
-- trigger fired again after a crash, or by two replicas, finds the run
-- and executes nothing.
ALTER TABLE runs ADD COLUMN triggers_fired INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET triggers_fired = 1;
CREATE INDEX runs_triggers_pending ON runs(id) WHERE triggers_fired = 0 AND state = 'succeeded';
ALTER TABLE runs ADD COLUMN trigger_cause TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX runs_trigger_cause ON runs(job, trigger_cause) WHERE trigger_cause <> '';
-- The same for a new image version's "image:NAME" triggers; its runs'
-- cause is "image:NAME:VERSION".
ALTER TABLE image_versions ADD COLUMN triggers_fired INTEGER NOT NULL DEFAULT 0;
UPDATE image_versions SET triggers_fired = 1;
CREATE INDEX image_versions_triggers_pending ON image_versions(name, version) WHERE triggers_fired = 0;

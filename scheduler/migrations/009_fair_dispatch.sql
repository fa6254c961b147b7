-- Fair dispatch (issue 29, docs/access-and-limits.md): a run's priority
-- orders its owner's runs (the job's, or the execute's override), and an
-- owner's queued and running runs are counted for max_queued and
-- max_running. leased is when the current attempt was leased.
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN leased BIGINT;
CREATE INDEX runs_owner_state ON runs(owner, state);

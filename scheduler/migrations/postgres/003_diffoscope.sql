-- Diffoscope tasks of unreproducible groups (issue 8): run rows of their
-- own kind, leased only to hosts with a diffoscope post hook.
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN task TEXT NOT NULL DEFAULT ''; -- JSON api.DiffoscopeTask
ALTER TABLE groups ADD COLUMN report_run BIGINT;

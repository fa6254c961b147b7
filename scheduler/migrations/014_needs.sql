-- Jobs that build on jobs (issue 30, docs/job-file.md "Needs"): a run's
-- key (what it builds: job revision, inputs, image, the keys of the runs
-- it needs), the runs each run needs, and the events that execute a job
-- (its on list), kept with the job's current revision.
ALTER TABLE runs ADD COLUMN run_key TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_key ON runs(job, run_key, id) WHERE run_key <> '';

CREATE TABLE run_needs (
	run_id   INTEGER NOT NULL, -- the dependent run
	job      TEXT NOT NULL,    -- the job it needs
	need_run INTEGER NOT NULL, -- the run of that job it builds on
	PRIMARY KEY (run_id, job)
) WITHOUT ROWID;
CREATE INDEX run_needs_need ON run_needs(need_run);

CREATE TABLE job_triggers (
	event TEXT NOT NULL, -- "success:JOB" or "image:NAME"
	job   TEXT NOT NULL,
	PRIMARY KEY (event, job)
);
CREATE INDEX job_triggers_job ON job_triggers(job);

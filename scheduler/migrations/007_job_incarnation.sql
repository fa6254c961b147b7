-- A job's incarnation (issue 25): a removed job's name can be added again,
-- by another owner too, and must not show the revisions, runs and groups of
-- the removed one. Revisions of a name are numbered on across incarnations
-- (a job added again starts after the highest revision the name had), so
-- the current incarnation is the job's revisions from first_revision on,
-- and a run or group belongs to it when its revision is. For jobs stored
-- before, the incarnation starts at the first revision made when the job
-- was (last) added: jobs.created.
ALTER TABLE jobs ADD COLUMN first_revision INTEGER NOT NULL DEFAULT 1;
UPDATE jobs SET first_revision = coalesce(
	(SELECT min(r.revision) FROM job_revisions r WHERE r.name = jobs.name AND r.created >= jobs.created),
	jobs.revision);

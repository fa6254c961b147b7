-- Client tokens: named, optionally expiring, revocable tokens for users
-- (jobs, runs, artifacts; no host or token management).
ALTER TABLE tokens ADD COLUMN name TEXT;           -- client: the name it is listed and revoked by
ALTER TABLE tokens ADD COLUMN last_used BIGINT;   -- client: last request, to the minute
CREATE UNIQUE INDEX tokens_client_name ON tokens(name) WHERE kind = 'client';

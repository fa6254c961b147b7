-- Retention (issue 29, docs/retention.md): kept is set by `kiln run keep`
-- (a run kept forever, whatever the retention rules say). The sweep looks
-- finished runs up by state and drops the blob grants of a blob it
-- removes by sha256.
ALTER TABLE runs ADD COLUMN kept BIGINT NOT NULL DEFAULT 0;
CREATE INDEX blob_grants_sha256 ON blob_grants(sha256);

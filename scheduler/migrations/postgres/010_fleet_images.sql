-- Images for a fleet (issue 27, docs/images-server.md): the server holds
-- versions of images (their manifests; the compressed tar is a blob), and
-- a run whose job names a server-held image is pinned to one version at
-- execute (image = NAME@VERSION, image_digest = its tar digest), which its
-- requeued attempts and its reproduce group's members share.
--
-- image_names keeps the last version number an image ever had, so that a
-- removed version's number is never given to other content.
CREATE TABLE image_names (
	name         TEXT PRIMARY KEY,
	last_version BIGINT NOT NULL
);
CREATE TABLE image_versions (
	name       TEXT NOT NULL,
	version    BIGINT NOT NULL,
	arch       TEXT NOT NULL,
	os         TEXT NOT NULL,
	method     TEXT NOT NULL DEFAULT '',
	recipe     TEXT NOT NULL DEFAULT '',
	tar_digest TEXT NOT NULL,
	tar_size   BIGINT NOT NULL,
	blob       TEXT NOT NULL,
	blob_size  BIGINT NOT NULL,
	created    BIGINT NOT NULL,
	PRIMARY KEY (name, version)
);
-- phase is what the host says a leased run is doing before its script
-- starts (e.g. fetching its image), as the run's page shows it.
ALTER TABLE runs ADD COLUMN image TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN phase TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_image ON runs(image, state) WHERE image <> '';

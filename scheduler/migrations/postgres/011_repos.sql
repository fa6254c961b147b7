-- Package repositories (issue 28, docs/publishing.md). A repository's
-- index set is a list of files (repo_files) at a generation; readers
-- serve the files of repos.generation, and a publish switches it in the
-- same transaction that inserts the new set, so a reader sees the old set
-- or the new one, never a mix, whatever dies when.
CREATE TABLE repos (
	name        TEXT PRIMARY KEY,
	type        TEXT NOT NULL,
	suite       TEXT NOT NULL,
	components  TEXT NOT NULL, -- JSON list
	arches      TEXT NOT NULL, -- JSON list
	-- publishers: owner keys (token:NAME, group:NAME) of client tokens
	-- whose jobs may publish here, JSON; the admin's jobs always may.
	publishers  TEXT NOT NULL,
	public      BIGINT NOT NULL,
	private_key TEXT NOT NULL, -- armored OpenPGP; never sent out
	public_key  TEXT NOT NULL,
	fingerprint TEXT NOT NULL,
	created     BIGINT NOT NULL,
	generation  BIGINT NOT NULL,
	published   BIGINT
);
-- The packages of a repository; control is the package's control fields
-- (JSON), from which every index set is written.
CREATE TABLE repo_packages (
	repo      TEXT NOT NULL,
	package   TEXT NOT NULL,
	version   TEXT NOT NULL,
	arch      TEXT NOT NULL,
	component TEXT NOT NULL,
	filename  TEXT NOT NULL,
	sha256    TEXT NOT NULL,
	size      BIGINT NOT NULL,
	control   TEXT NOT NULL,
	run       BIGINT,
	added     BIGINT NOT NULL,
	PRIMARY KEY (repo, package, version, arch)
);
-- Every file under pool/ (packages, .buildinfo, .changes): a blob.
CREATE TABLE repo_pool (
	repo   TEXT NOT NULL,
	path   TEXT NOT NULL,
	sha256 TEXT NOT NULL,
	size   BIGINT NOT NULL,
	PRIMARY KEY (repo, path)
);
-- Index files by generation: the current one and the one before it
-- (by-hash readers of the previous Release).
CREATE TABLE repo_files (
	repo       TEXT NOT NULL,
	generation BIGINT NOT NULL,
	path       TEXT NOT NULL,
	sha256     TEXT NOT NULL,
	size       BIGINT NOT NULL,
	PRIMARY KEY (repo, generation, path)
);
CREATE INDEX repo_files_sha256 ON repo_files(repo, sha256);
-- What became of a run's packages in a repository.
CREATE TABLE run_publications (
	run      BIGINT NOT NULL,
	repo     TEXT NOT NULL,
	state    TEXT NOT NULL,
	packages TEXT NOT NULL, -- JSON list
	detail   TEXT NOT NULL,
	created  BIGINT NOT NULL,
	PRIMARY KEY (run, repo)
);

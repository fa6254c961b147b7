-- The server's identity: a random id made at first start. Workers record it
-- at enroll, get it with every assignment, and key their on-host state by
-- it, so a host moved to another server never mixes the two servers' runs.
CREATE TABLE server_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- Keys allowed to sign a project's recipes (and, later, its build requests). A key added by
-- `recipe rotate` carries the previous key's signature over its exact PEM text, so that a
-- volunteer who pinned the old key can follow the chain without trusting this server.
CREATE TABLE project_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    endorsed_by TEXT,
    endorsement TEXT,
    created_at  TIMESTAMP NOT NULL,
    revoked_at  TIMESTAMP,
    UNIQUE (project_id, fingerprint)
);

-- Every recipe ever published, byte for byte with its signature: the newest version is
-- served, the rest is history.
CREATE TABLE recipes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id      BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version         BIGINT NOT NULL,
    body            BLOB NOT NULL,
    signature       TEXT NOT NULL,
    digest          TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    expires_at      TIMESTAMP NOT NULL,
    published_at    TIMESTAMP NOT NULL,
    UNIQUE (project_id, version)
);

-- Capability names a project's recipes may require, each with what it means.
CREATE TABLE project_capabilities (
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);

-- Projects a builder asked to join after its registration (`tbox-report join` of a second
-- project): it may report for them once an admin approves (`builder approve`), as for the first.
CREATE TABLE builder_project_requests (
    builder_id   BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    project_id   BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    requested_at TIMESTAMP NOT NULL,
    PRIMARY KEY (builder_id, project_id)
);

-- What a recipe build ran: the recipe's version, the key that signed it, the sandbox used
-- ("none" when the volunteer opted out). NULL for builds of hand-written steps.
ALTER TABLE builds ADD COLUMN recipe_version BIGINT;
ALTER TABLE builds ADD COLUMN recipe_key TEXT;
ALTER TABLE builds ADD COLUMN sandbox TEXT;

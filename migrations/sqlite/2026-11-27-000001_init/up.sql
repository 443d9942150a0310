-- Same tables as migrations/postgres; ids are INTEGER PRIMARY KEY (SQLite 64-bit rowids), AUTOINCREMENT so pruned ids never come back.

CREATE TABLE projects (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL UNIQUE,
    title        TEXT NOT NULL,
    repo_url     TEXT,
    revision_url TEXT,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE builders (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('active', 'pending', 'revoked')),
    owner          TEXT,
    description    TEXT,
    -- JSON object of the latest report's properties (os, arch, compiler, ...).
    properties     TEXT NOT NULL DEFAULT '{}',
    created_at     TIMESTAMP NOT NULL,
    last_report_at TIMESTAMP
);

CREATE TABLE builder_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    revoked_at  TIMESTAMP,
    UNIQUE (builder_id, fingerprint)
);

CREATE TABLE builder_projects (
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (builder_id, project_id)
);
CREATE INDEX builder_projects_project ON builder_projects (project_id);

CREATE TABLE builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    uuid        TEXT NOT NULL,
    branch      TEXT NOT NULL,
    revision    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('started', 'finished')),
    result      TEXT,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    reporter    TEXT NOT NULL,
    properties  TEXT NOT NULL,
    received_at TIMESTAMP NOT NULL,
    UNIQUE (builder_id, uuid)
);
-- The waterfall and the builds feed: newest builds of a project.
CREATE INDEX builds_project_newest ON builds (project_id, started_at DESC, id DESC);
-- A builder's page: its newest builds.
CREATE INDEX builds_builder_newest ON builds (builder_id, started_at DESC, id DESC);
-- One revision across builders.
CREATE INDEX builds_project_revision ON builds (project_id, revision);

-- Every accepted report body, by the hex SHA-256 of its bytes: makes re-sends idempotent.
CREATE TABLE reports (
    digest      TEXT PRIMARY KEY,
    build_id    BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    received_at TIMESTAMP NOT NULL
);
CREATE INDEX reports_build ON reports (build_id);

-- Logs, zstd-compressed, content-addressed by the SHA-256 of the uncompressed text.
CREATE TABLE logs (
    digest     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    compressed BLOB NOT NULL
);

CREATE TABLE steps (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id      BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    name          TEXT NOT NULL,
    kind          TEXT,
    result        TEXT NOT NULL,
    started_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP NOT NULL,
    exit_code     INTEGER,
    log_digest    TEXT REFERENCES logs (digest),
    log_truncated BOOLEAN NOT NULL,
    UNIQUE (build_id, position)
);
CREATE INDEX steps_log_digest ON steps (log_digest);

CREATE TABLE test_results (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id    BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    suite       TEXT NOT NULL,
    name        TEXT NOT NULL,
    result      TEXT NOT NULL,
    duration_ms BIGINT,
    message     TEXT
);
CREATE INDEX test_results_build ON test_results (build_id);

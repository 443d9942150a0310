-- Builds a project asks for ("5 builders on main, by tomorrow"), signed by a project key.
CREATE TABLE build_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    branch       TEXT NOT NULL,
    revision     TEXT,
    builders     INTEGER NOT NULL,
    -- JSON list of capability names a builder must have.
    requires     TEXT NOT NULL DEFAULT '[]',
    deadline     TIMESTAMP,
    state        TEXT NOT NULL CHECK (state IN ('open', 'done', 'expired', 'cancelled')),
    -- Why it closed when it did not simply get done (deadline, attempts used up, cancelled).
    reason       TEXT,
    -- SHA-256 of the signed body: a replayed request is the same request. NULL from the CLI.
    digest       TEXT UNIQUE,
    -- The signed body and its signature, handed to builders with a lease: a volunteer builds a
    -- requested revision only if a project key it trusts asked for it. NULL from the CLI.
    body         TEXT,
    signature    TEXT,
    requested_by TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    closed_at    TIMESTAMP
);
CREATE INDEX build_requests_project ON build_requests (project_id, created_at);
CREATE INDEX build_requests_open ON build_requests (created_at) WHERE state = 'open';

-- One builder's attempt at a request: leased until expires_at (renewed while it builds), then
-- done (its report came), lost (it went silent) or cancelled (the volunteer stopped it): the
-- last two give the slot to another builder.
CREATE TABLE leases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  BIGINT NOT NULL REFERENCES build_requests (id) ON DELETE CASCADE,
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('leased', 'done', 'lost', 'cancelled')),
    granted_at  TIMESTAMP NOT NULL,
    expires_at  TIMESTAMP NOT NULL,
    build_id    BIGINT REFERENCES builds (id) ON DELETE SET NULL,
    ended_at    TIMESTAMP,
    -- One request never gets two attempts from the same builder.
    UNIQUE (request_id, builder_id)
);
CREATE INDEX leases_leased ON leases (expires_at) WHERE state = 'leased';
CREATE INDEX leases_builder ON leases (builder_id);

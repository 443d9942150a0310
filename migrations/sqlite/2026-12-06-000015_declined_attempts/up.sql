-- An attempt its volunteer declined (an `exception` report answering the lease: a recipe or
-- request it refused, a source it could not fetch) is `declined`, with the reason: it does not
-- fill the slot, which stays open for other builders. SQLite cannot change a CHECK constraint
-- in place: the table is rebuilt (nothing refers to it).
CREATE TABLE leases_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  BIGINT NOT NULL REFERENCES build_requests (id) ON DELETE CASCADE,
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('leased', 'done', 'lost', 'cancelled', 'declined')),
    granted_at  TIMESTAMP NOT NULL,
    expires_at  TIMESTAMP NOT NULL,
    build_id    BIGINT REFERENCES builds (id) ON DELETE SET NULL,
    ended_at    TIMESTAMP,
    reason      TEXT,
    UNIQUE (request_id, builder_id)
);
INSERT INTO leases_new (id, request_id, builder_id, state, granted_at, expires_at, build_id, ended_at)
    SELECT id, request_id, builder_id, state, granted_at, expires_at, build_id, ended_at FROM leases;
DROP TABLE leases;
ALTER TABLE leases_new RENAME TO leases;
CREATE INDEX leases_leased ON leases (expires_at) WHERE state = 'leased';
CREATE INDEX leases_builder ON leases (builder_id);

CREATE TABLE leases_old (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  BIGINT NOT NULL REFERENCES build_requests (id) ON DELETE CASCADE,
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    state       TEXT NOT NULL CHECK (state IN ('leased', 'done', 'lost', 'cancelled')),
    granted_at  TIMESTAMP NOT NULL,
    expires_at  TIMESTAMP NOT NULL,
    build_id    BIGINT REFERENCES builds (id) ON DELETE SET NULL,
    ended_at    TIMESTAMP,
    UNIQUE (request_id, builder_id)
);
INSERT INTO leases_old (id, request_id, builder_id, state, granted_at, expires_at, build_id, ended_at)
    SELECT id, request_id, builder_id, CASE state WHEN 'declined' THEN 'cancelled' ELSE state END,
           granted_at, expires_at, build_id, ended_at FROM leases;
DROP TABLE leases;
ALTER TABLE leases_old RENAME TO leases;
CREATE INDEX leases_leased ON leases (expires_at) WHERE state = 'leased';
CREATE INDEX leases_builder ON leases (builder_id);

-- A project's keys become one signed, versioned, expiring document (`tbox-keys/1`), so that a
-- mirror cannot drop a revocation: every version ever published, byte for byte with its
-- signature; the newest is served, the rest lets a volunteer walk from the version it holds.
CREATE TABLE key_lists (
    id              BIGSERIAL PRIMARY KEY,
    project_id      BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version         BIGINT NOT NULL,
    body            BYTEA NOT NULL,
    signature       TEXT NOT NULL,
    digest          TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    expires_at      TIMESTAMP NOT NULL,
    published_at    TIMESTAMP NOT NULL,
    UNIQUE (project_id, version)
);

-- The unsigned rotation chain (a key endorsed by the previous one) is replaced by key lists.
ALTER TABLE project_keys DROP COLUMN endorsement;
ALTER TABLE project_keys DROP COLUMN endorsed_by;

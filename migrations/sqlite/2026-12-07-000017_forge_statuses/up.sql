-- Commit statuses on a forge (DESIGN "Where projects already look"): a forge is a subscriber
-- of kind `forge` (its API URL in `target`, its token in `secret`, which forge, which
-- repository, which context), told of `status` notifications: a builder's status at a revision
-- (builder_id set) or the revision's summary (builder_id NULL), with the revision they are of.
-- SQLite cannot change a CHECK constraint or a NOT NULL in place: the three tables are
-- rebuilt. Renaming them first makes `deliveries_old` refer to the old tables, so that
-- dropping those deletes none of the copies.
ALTER TABLE deliveries RENAME TO deliveries_old;
ALTER TABLE notifications RENAME TO notifications_old;
ALTER TABLE subscriptions RENAME TO subscriptions_old;
CREATE TABLE subscriptions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id    BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    builder_id    BIGINT REFERENCES builders (id) ON DELETE CASCADE,
    branch        TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('webhook', 'email', 'forge')),
    -- The webhook's URL, the e-mail address, or the forge's API URL.
    target        TEXT NOT NULL,
    -- The webhook's HMAC secret, or the forge's token: never shown.
    secret        TEXT,
    created_at    TIMESTAMP NOT NULL,
    failing_since TIMESTAMP,
    allow_private BOOLEAN NOT NULL DEFAULT FALSE,
    forge         TEXT CHECK (forge IN ('github', 'gitlab', 'gitea')),
    repo          TEXT,
    context       TEXT
);
INSERT INTO subscriptions (id, project_id, builder_id, branch, kind, target, secret, created_at, failing_since,
                           allow_private)
    SELECT id, project_id, builder_id, branch, kind, target, secret, created_at, failing_since, allow_private
    FROM subscriptions_old;
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_key   TEXT NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost', 'disputed', 'status')),
    -- NULL only for a revision's summary status.
    builder_id  BIGINT REFERENCES builders (id) ON DELETE CASCADE,
    branch      TEXT,
    build_id    BIGINT,
    facts       TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    -- For `status`: the revision the status is of.
    revision    TEXT,
    UNIQUE (project_id, event_key)
);
INSERT INTO notifications (id, project_id, event_key, event, builder_id, branch, build_id, facts, created_at)
    SELECT id, project_id, event_key, event, builder_id, branch, build_id, facts, created_at FROM notifications_old;
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    uid             TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_attempt_at TIMESTAMP,
    last_answer     TEXT,
    created_at      TIMESTAMP NOT NULL,
    done_at         TIMESTAMP,
    UNIQUE (notification_id, subscription_id)
);
INSERT INTO deliveries SELECT * FROM deliveries_old;
DROP TABLE deliveries_old;
DROP TABLE notifications_old;
DROP TABLE subscriptions_old;
CREATE INDEX subscriptions_project ON subscriptions (project_id);
CREATE INDEX notifications_created ON notifications (created_at);
-- The last status said of a revision in one context, and how many were (GitHub keeps 1,000).
CREATE INDEX notifications_statuses ON notifications (project_id, revision, builder_id, id) WHERE event = 'status';
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at);

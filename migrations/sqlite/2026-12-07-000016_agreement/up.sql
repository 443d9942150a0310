-- Results a project can trust from strangers (DESIGN): a request may ask that `quorum`
-- builders of distinct owners (or distinct builders) agree; a dispute opens extra slots (at
-- most 3); the verdict is kept with the request, whether each answer agreed with it on its
-- lease, an answer's standing on its build (for pages: a disputed build never looks green),
-- and each builder's record of agreements and disputes.
ALTER TABLE build_requests ADD COLUMN quorum INTEGER;
ALTER TABLE build_requests ADD COLUMN distinct_by TEXT NOT NULL DEFAULT 'owner'
    CHECK (distinct_by IN ('owner', 'builder'));
ALTER TABLE build_requests ADD COLUMN extra_slots INTEGER NOT NULL DEFAULT 0;
-- A quorum-less request that `serve --spot-check` gave a second slot: judged as quorum 2.
ALTER TABLE build_requests ADD COLUMN spot_check BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE build_requests ADD COLUMN verdict TEXT
    CHECK (verdict IN ('pending', 'agreed', 'disputed', 'inconclusive'));
ALTER TABLE leases ADD COLUMN agrees BOOLEAN;
ALTER TABLE builds ADD COLUMN agreement TEXT CHECK (agreement IN ('pending', 'agreed', 'disputed'));
-- JSON list of {path, sha256, size}, as reported.
ALTER TABLE builds ADD COLUMN artifacts TEXT;
ALTER TABLE builders ADD COLUMN agreed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builders ADD COLUMN disputed BIGINT NOT NULL DEFAULT 0;

-- Notifications carry a new event, `disputed`. SQLite cannot change a CHECK constraint in
-- place: both tables are rebuilt. Renaming `notifications` first makes `deliveries` refer to
-- the old table, so that dropping it deletes no delivery of the copies.
ALTER TABLE deliveries RENAME TO deliveries_old;
ALTER TABLE notifications RENAME TO notifications_old;
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_key   TEXT NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost', 'disputed')),
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    branch      TEXT,
    build_id    BIGINT,
    facts       TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    UNIQUE (project_id, event_key)
);
INSERT INTO notifications SELECT * FROM notifications_old;
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
CREATE INDEX notifications_created ON notifications (created_at);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at);

-- Who is told about status changes: a webhook (its URL and HMAC secret) or an e-mail address,
-- for a project, optionally narrowed to one builder and/or one branch.
CREATE TABLE subscriptions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id    BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    builder_id    BIGINT REFERENCES builders (id) ON DELETE CASCADE,
    branch        TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    -- The webhook's URL or the e-mail address.
    target        TEXT NOT NULL,
    secret        TEXT,
    created_at    TIMESTAMP NOT NULL,
    -- Since when every attempt to reach it failed (NULL after a success): after a day of
    -- that, the project page says so.
    failing_since TIMESTAMP
);
CREATE INDEX subscriptions_project ON subscriptions (project_id);

-- Status changes (the Atom feed's events), recorded in the transaction that caused them, once
-- each: event_key names the change (build/42/broke), so two server processes noticing the
-- same change (a builder gone stale) record it once.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_key   TEXT NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost')),
    builder_id  BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    branch      TEXT,
    -- No foreign key: pruning a build keeps what was said about it.
    build_id    BIGINT,
    -- What happened, as JSON (statuses, revisions, first error, new failures); links are
    -- added when it is sent, from the sending server's public URL.
    facts       TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    UNIQUE (project_id, event_key)
);
CREATE INDEX notifications_created ON notifications (created_at);

-- One notification to one subscriber: pending until delivered, or failed after a day of
-- retries. A sender claims a due delivery by moving next_attempt_at past the attempt's
-- timeout (FOR UPDATE SKIP LOCKED on PostgreSQL), so several server processes send it once.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    -- Sent as Tbox-Delivery: the same on every attempt, so receivers can drop repeats.
    uid             TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_attempt_at TIMESTAMP,
    -- The last attempt's outcome: an HTTP status and the start of the body, an SMTP reply, or
    -- the error that stopped it.
    last_answer     TEXT,
    created_at      TIMESTAMP NOT NULL,
    done_at         TIMESTAMP,
    UNIQUE (notification_id, subscription_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at);

-- Commit statuses on a forge (DESIGN "Where projects already look"): a forge is a subscriber
-- of kind `forge` (its API URL in `target`, its token in `secret`, which forge, which
-- repository, which context), told of `status` notifications: a builder's status at a revision
-- (builder_id set) or the revision's summary (builder_id NULL), with the revision they are of.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_kind_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_kind_check CHECK (kind IN ('webhook', 'email', 'forge'));
ALTER TABLE subscriptions ADD COLUMN forge TEXT CHECK (forge IN ('github', 'gitlab', 'gitea'));
ALTER TABLE subscriptions ADD COLUMN repo TEXT;
ALTER TABLE subscriptions ADD COLUMN context TEXT;
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost', 'disputed', 'status'));
ALTER TABLE notifications ALTER COLUMN builder_id DROP NOT NULL;
ALTER TABLE notifications ADD COLUMN revision TEXT;
-- The last status said of a revision in one context, and how many were (GitHub keeps 1,000).
CREATE INDEX notifications_statuses ON notifications (project_id, revision, builder_id, id) WHERE event = 'status';

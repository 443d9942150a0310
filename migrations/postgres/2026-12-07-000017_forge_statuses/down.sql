DROP INDEX notifications_statuses;
DELETE FROM notifications WHERE event = 'status' OR builder_id IS NULL;
DELETE FROM subscriptions WHERE kind = 'forge';
ALTER TABLE notifications DROP COLUMN revision;
ALTER TABLE notifications ALTER COLUMN builder_id SET NOT NULL;
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost', 'disputed'));
ALTER TABLE subscriptions DROP COLUMN context;
ALTER TABLE subscriptions DROP COLUMN repo;
ALTER TABLE subscriptions DROP COLUMN forge;
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_kind_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_kind_check CHECK (kind IN ('webhook', 'email'));

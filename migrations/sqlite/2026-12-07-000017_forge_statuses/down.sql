-- The wider CHECKs and the nullable builder stay: narrowing them would rebuild three tables
-- again, and no older version writes what they allow.
DROP INDEX notifications_statuses;
DELETE FROM notifications WHERE event = 'status';
DELETE FROM subscriptions WHERE kind = 'forge';
ALTER TABLE notifications DROP COLUMN revision;
ALTER TABLE subscriptions DROP COLUMN context;
ALTER TABLE subscriptions DROP COLUMN repo;
ALTER TABLE subscriptions DROP COLUMN forge;

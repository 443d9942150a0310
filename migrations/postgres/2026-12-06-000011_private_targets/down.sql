ALTER TABLE subscriptions DROP COLUMN allow_private;

-- A webhook goes to public addresses only, unless the operator allowed an inside receiver for
-- this subscription (`notify add --allow-private-target`).
ALTER TABLE subscriptions ADD COLUMN allow_private BOOLEAN NOT NULL DEFAULT FALSE;

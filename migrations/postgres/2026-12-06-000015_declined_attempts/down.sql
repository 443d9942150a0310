ALTER TABLE leases DROP COLUMN reason;
UPDATE leases SET state = 'cancelled' WHERE state = 'declined';
ALTER TABLE leases DROP CONSTRAINT leases_state_check;
ALTER TABLE leases ADD CONSTRAINT leases_state_check CHECK (state IN ('leased', 'done', 'lost', 'cancelled'));

-- An attempt its volunteer declined (an `exception` report answering the lease: a recipe or
-- request it refused, a source it could not fetch) is `declined`, with the reason: it does not
-- fill the slot, which stays open for other builders.
ALTER TABLE leases DROP CONSTRAINT leases_state_check;
ALTER TABLE leases ADD CONSTRAINT leases_state_check
    CHECK (state IN ('leased', 'done', 'lost', 'cancelled', 'declined'));
ALTER TABLE leases ADD COLUMN reason TEXT;

DELETE FROM notifications WHERE event = 'disputed';
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost'));
ALTER TABLE builders DROP COLUMN disputed;
ALTER TABLE builders DROP COLUMN agreed;
ALTER TABLE builds DROP COLUMN artifacts;
ALTER TABLE builds DROP COLUMN agreement;
ALTER TABLE leases DROP COLUMN agrees;
ALTER TABLE build_requests DROP COLUMN verdict;
ALTER TABLE build_requests DROP COLUMN spot_check;
ALTER TABLE build_requests DROP COLUMN extra_slots;
ALTER TABLE build_requests DROP COLUMN distinct_by;
ALTER TABLE build_requests DROP COLUMN quorum;

-- The `disputed` event stays allowed: narrowing the CHECK would rebuild two tables again,
-- and no older version writes it.
DELETE FROM notifications WHERE event = 'disputed';
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

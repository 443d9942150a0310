-- Results a project can trust from strangers (DESIGN): a request may ask that `quorum`
-- builders of distinct owners (or distinct builders) agree; a dispute opens extra slots (at
-- most 3); the verdict is kept with the request, whether each answer agreed with it on its
-- lease, an answer's standing on its build (for pages: a disputed build never looks green),
-- and each builder's record of agreements and disputes.
ALTER TABLE build_requests ADD COLUMN quorum INTEGER;
ALTER TABLE build_requests ADD COLUMN distinct_by TEXT NOT NULL DEFAULT 'owner'
    CHECK (distinct_by IN ('owner', 'builder'));
ALTER TABLE build_requests ADD COLUMN extra_slots INTEGER NOT NULL DEFAULT 0;
-- A quorum-less request that `serve --spot-check` gave a second slot: judged as quorum 2.
ALTER TABLE build_requests ADD COLUMN spot_check BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE build_requests ADD COLUMN verdict TEXT
    CHECK (verdict IN ('pending', 'agreed', 'disputed', 'inconclusive'));
ALTER TABLE leases ADD COLUMN agrees BOOLEAN;
ALTER TABLE builds ADD COLUMN agreement TEXT CHECK (agreement IN ('pending', 'agreed', 'disputed'));
-- JSON list of {path, sha256, size}, as reported.
ALTER TABLE builds ADD COLUMN artifacts TEXT;
ALTER TABLE builders ADD COLUMN agreed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builders ADD COLUMN disputed BIGINT NOT NULL DEFAULT 0;
-- Notifications carry a new event, `disputed`.
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('broke', 'fixed', 'new', 'stale', 'lost', 'disputed'));

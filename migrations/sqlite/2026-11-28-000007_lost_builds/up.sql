-- A `started` build with no `finished` report after `serve --lost-after` is marked lost by
-- setting its result to 'lost' (its state stays 'started', so a late `finished` report still
-- completes it). Every server looks for such builds every half minute: this index holds only
-- the builds still running, so the search stays a short index scan however many builds (and
-- lost builds) are stored.
CREATE INDEX builds_started ON builds (started_at) WHERE state = 'started' AND result IS NULL;

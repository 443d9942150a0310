DROP INDEX builds_started;
-- Without lost builds, a started build is simply still building.
UPDATE builds SET result = NULL WHERE state = 'started' AND result = 'lost';

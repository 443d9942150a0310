-- What a failing test means is decided once, when its report is stored, instead of on every
-- view of the tests page (1.3 s on SQLite with 20 builds of 20,000 tests, for anyone asking):
-- since which build of its builder and branch it has been failing, and whether it is flaky on
-- that builder. NULL/false for passing and skipped tests, and for rows stored before.
ALTER TABLE test_results ADD COLUMN since_build_id BIGINT;
ALTER TABLE test_results ADD COLUMN flaky BOOLEAN NOT NULL DEFAULT FALSE;

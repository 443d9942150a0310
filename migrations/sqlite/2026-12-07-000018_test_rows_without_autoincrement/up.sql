-- Test rows are numbered by SQLite's plain rowid (the largest + 1), no longer AUTOINCREMENT.
-- AUTOINCREMENT reads and rewrites the table's row in sqlite_sequence on every INSERT, and a
-- report stores each of its (hundreds of) tests with an INSERT of its own, on the single
-- writer: 0.84 M of 5.2 M instructions per 200-test report in a callgrind count of the inserts
-- alone. Nothing refers to a test row's id (it only keeps a build's tests in their report's
-- order), so an id used again after the newest build is pruned is harmless.
-- SQLite cannot drop AUTOINCREMENT in place: the table is copied (once; on a large database
-- this takes a while, see the README's "Upgrades").
CREATE TABLE test_results_new (
    id             INTEGER PRIMARY KEY,
    build_id       BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    suite          TEXT NOT NULL,
    name           TEXT NOT NULL,
    result         TEXT NOT NULL,
    duration_ms    BIGINT,
    message        TEXT,
    since_build_id BIGINT,
    flaky          BOOLEAN NOT NULL DEFAULT FALSE,
    history        BIGINT
);
INSERT INTO test_results_new (id, build_id, suite, name, result, duration_ms, message, since_build_id, flaky, history)
    SELECT id, build_id, suite, name, result, duration_ms, message, since_build_id, flaky, history FROM test_results;
DROP TABLE test_results;
ALTER TABLE test_results_new RENAME TO test_results;
CREATE INDEX test_results_build ON test_results (build_id);
DELETE FROM sqlite_sequence WHERE name = 'test_results';

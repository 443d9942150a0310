CREATE TABLE test_results_old (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
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
INSERT INTO test_results_old (id, build_id, suite, name, result, duration_ms, message, since_build_id, flaky, history)
    SELECT id, build_id, suite, name, result, duration_ms, message, since_build_id, flaky, history FROM test_results;
DROP TABLE test_results;
ALTER TABLE test_results_old RENAME TO test_results;
CREATE INDEX test_results_build ON test_results (build_id);

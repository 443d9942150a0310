-- The newest build of every (project, builder, branch): status feeds, badges and cctray read
-- this small table instead of searching a million builds. Kept by ingest, in the same
-- transaction as the build.
CREATE TABLE heads (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    branch     TEXT NOT NULL,
    build_id   BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    started_at TIMESTAMP NOT NULL,
    PRIMARY KEY (project_id, builder_id, branch)
);
CREATE INDEX heads_build ON heads (build_id);

INSERT INTO heads (project_id, builder_id, branch, build_id, started_at)
SELECT b.project_id, b.builder_id, b.branch, b.id, b.started_at
FROM builds b
WHERE b.id = (SELECT x.id FROM builds x
              WHERE x.project_id = b.project_id AND x.builder_id = b.builder_id AND x.branch = b.branch
              ORDER BY x.started_at DESC, x.id DESC LIMIT 1);

-- One test's history across builders and builds.
CREATE INDEX test_results_name ON test_results (name, suite);

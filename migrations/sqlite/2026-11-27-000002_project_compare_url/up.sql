-- Link template for the changes between two revisions, with {from} and {to}.
ALTER TABLE projects ADD COLUMN compare_url TEXT;

-- Newest build of one builder in one project: waterfall headers, front page, builder page.
CREATE INDEX builds_builder_project_newest ON builds (builder_id, project_id, started_at DESC, id DESC);

DROP INDEX builds_builder_project_newest;
ALTER TABLE projects DROP COLUMN compare_url;

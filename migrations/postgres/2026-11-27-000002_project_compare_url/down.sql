ALTER TABLE projects DROP COLUMN compare_url;

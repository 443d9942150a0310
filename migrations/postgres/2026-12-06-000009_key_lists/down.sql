ALTER TABLE project_keys ADD COLUMN endorsed_by TEXT;
ALTER TABLE project_keys ADD COLUMN endorsement TEXT;
DROP TABLE key_lists;

ALTER TABLE builds DROP COLUMN sandbox;
ALTER TABLE builds DROP COLUMN recipe_key;
ALTER TABLE builds DROP COLUMN recipe_version;
DROP TABLE builder_project_requests;
DROP TABLE project_capabilities;
DROP TABLE recipes;
DROP TABLE project_keys;

ALTER TABLE builders DROP COLUMN registered_from;

-- Link template for the changes between two revisions, with {from} and {to}.
ALTER TABLE projects ADD COLUMN compare_url TEXT;

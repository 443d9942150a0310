ALTER TABLE test_results DROP COLUMN history;

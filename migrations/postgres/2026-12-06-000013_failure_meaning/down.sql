ALTER TABLE test_results DROP COLUMN flaky;
ALTER TABLE test_results DROP COLUMN since_build_id;

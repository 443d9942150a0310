CREATE INDEX test_results_name ON test_results (name, suite);

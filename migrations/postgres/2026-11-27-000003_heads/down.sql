DROP INDEX test_results_name;
DROP TABLE heads;

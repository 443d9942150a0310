-- Test results are found through their build (test_results_build), no longer by name.
-- Every report adds rows for a few hundred test names; in a name-ordered index each lands on
-- a page of its own, so each report rewrote hundreds of index pages (1.7 ms of the 4 ms a
-- report cost on SQLite). A test's history walks the project's newest builds instead and
-- reads each one's tests, which lie together in the table.
DROP INDEX test_results_name;

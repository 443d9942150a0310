-- `history`: a test's last 20 outcomes on its builder and branch (bits, newest lowest, 1 =
-- failed, under a marker bit), carried from the previous build's row, so that judging a report
-- reads one build's rows rather than a window of history (`results::tests::History`). NULL for
-- rows stored before: their history starts again from the next report.
ALTER TABLE test_results ADD COLUMN history BIGINT;

-- SQLite only (its test rows lose AUTOINCREMENT); PostgreSQL's BIGSERIAL costs nothing
-- per row. Kept so that both backends have the same list of migrations.
SELECT 1;

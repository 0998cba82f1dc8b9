-- Reverts 000009_river_job_id_autoincrement.up.sql.

DELETE FROM river_migration WHERE version = 8;

-- No-op. Postgres sequences already prevent automatically generated job IDs
-- from being reused.
SELECT 1;

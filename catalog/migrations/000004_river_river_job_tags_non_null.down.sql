-- Reverts 000004_river_river_job_tags_non_null.up.sql.

DELETE FROM river_migration WHERE version = 3;

ALTER TABLE river_job
    ALTER COLUMN tags DROP NOT NULL,
    ALTER COLUMN tags DROP DEFAULT;

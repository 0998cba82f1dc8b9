-- Reverts 000003_river_initial_schema.up.sql.

DELETE FROM river_migration WHERE version = 2;

DROP TABLE river_job;
DROP FUNCTION river_job_notify;
DROP TYPE river_job_state;

DROP TABLE river_leader;

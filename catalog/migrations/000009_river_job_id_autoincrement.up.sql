-- River (riverqueue/river v0.51.2) job queue schema, migration line "main" version 8: 008_job_id_autoincrement.
-- Copied from riverpgxv5/migration/main so golang-migrate applies every catalog change;
-- River's schema templates are rendered for the default schema.

-- No-op. Postgres sequences already prevent automatically generated job IDs
-- from being reused.
SELECT 1;

INSERT INTO river_migration (line, version) VALUES ('main', 8);

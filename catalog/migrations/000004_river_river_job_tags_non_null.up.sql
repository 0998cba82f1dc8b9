-- River (riverqueue/river v0.51.2) job queue schema, migration line "main" version 3: 003_river_job_tags_non_null.
-- Copied from riverpgxv5/migration/main so golang-migrate applies every catalog change;
-- River's schema templates are rendered for the default schema.

ALTER TABLE river_job ALTER COLUMN tags SET DEFAULT '{}';
UPDATE river_job SET tags = '{}' WHERE tags IS NULL;
ALTER TABLE river_job ALTER COLUMN tags SET NOT NULL;

INSERT INTO river_migration (version) VALUES (3);

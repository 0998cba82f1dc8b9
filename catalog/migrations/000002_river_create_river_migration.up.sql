-- River (riverqueue/river v0.51.2) job queue schema, migration line "main" version 1: 001_create_river_migration.
-- Copied from riverpgxv5/migration/main so golang-migrate applies every catalog change;
-- River's schema templates are rendered for the default schema.

CREATE TABLE river_migration(
  id bigserial PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT NOW(),
  version bigint NOT NULL,
  CONSTRAINT version CHECK (version >= 1)
);

CREATE UNIQUE INDEX ON river_migration USING btree(version);
INSERT INTO river_migration (version) VALUES (1);

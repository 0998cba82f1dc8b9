-- Reverts 000002_river_create_river_migration.up.sql.

DROP TABLE river_migration;
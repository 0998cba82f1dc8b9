DROP INDEX IF EXISTS tenants_created_idx;
DROP TABLE IF EXISTS console_sessions;

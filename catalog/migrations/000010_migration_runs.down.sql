DROP TABLE migration_run_tenants;
DROP TABLE migration_runs;

ALTER TABLE evacuation_tenants DROP COLUMN retry_at;
ALTER TABLE evacuation_tenants DROP COLUMN attempts;
ALTER TABLE evacuations DROP COLUMN max_attempts;
ALTER TABLE moves DROP COLUMN in_step;
ALTER TABLE moves DROP COLUMN keep_lag_bytes;
ALTER TABLE moves DROP COLUMN keep_reason;
ALTER TABLE moves DROP COLUMN keep_in_step;

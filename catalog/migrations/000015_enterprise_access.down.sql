DROP TABLE tenant_hostnames;
DROP INDEX audit_events_tenant_id_idx;
ALTER TABLE tenants DROP COLUMN network_allow;
ALTER TABLE api_keys DROP COLUMN expiry_recorded;
ALTER TABLE api_keys DROP COLUMN expires_at;
ALTER TABLE api_keys DROP COLUMN scopes;

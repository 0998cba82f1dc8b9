ALTER TABLE tenants DROP COLUMN network_allow;
ALTER TABLE api_keys DROP COLUMN expires_at;
ALTER TABLE api_keys DROP COLUMN scopes;

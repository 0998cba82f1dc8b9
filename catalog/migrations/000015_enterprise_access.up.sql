-- Scoped and expiring API keys. Existing keys keep every scope ('*') and
-- never expire: nothing that works today stops working.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{*}';
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

-- A tenant's IP allowlist: when not empty, its API answers only clients in
-- these networks.
ALTER TABLE tenants ADD COLUMN network_allow cidr[] NOT NULL DEFAULT '{}';

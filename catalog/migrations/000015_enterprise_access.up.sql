-- Scoped and expiring API keys. Existing keys keep every scope ('*') and
-- never expire: nothing that works today stops working.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{*}';
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

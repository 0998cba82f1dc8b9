-- Scoped and expiring API keys. Existing keys keep every scope ('*') and
-- never expire: nothing that works today stops working.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{*}';
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
-- Set once the key's expiry is in the audit log (key.expired): expiry is
-- passive, so the routers' meters record it after the fact, once.
ALTER TABLE api_keys ADD COLUMN expiry_recorded boolean NOT NULL DEFAULT false;
-- What every flush asks for (RecordExpiredKeys), without a scan of every key.
CREATE INDEX api_keys_expiry_pending_idx ON api_keys (expires_at) WHERE NOT expiry_recorded AND revoked_at IS NULL;

-- A tenant's IP allowlist: when not empty, its API answers only clients in
-- these networks.
ALTER TABLE tenants ADD COLUMN network_allow cidr[] NOT NULL DEFAULT '{}';

-- GET /v1/audit pages a tenant's events by id.
CREATE INDEX audit_events_tenant_id_idx ON audit_events (tenant_id, id);

-- Custom hostnames: a request to one must carry a key of its tenant.
CREATE TABLE tenant_hostnames (
    hostname   text PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_hostnames_tenant_idx ON tenant_hostnames (tenant_id);

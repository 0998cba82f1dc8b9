-- The fleet: PostgreSQL servers that hold tenant databases.
CREATE TABLE servers (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    dsn_sealed   bytea NOT NULL,             -- admin DSN, AES-GCM sealed (catalog.Cipher)
    dsn_redacted text NOT NULL,              -- the DSN without its password, for display
    capacity     integer NOT NULL CHECK (capacity > 0),    -- most tenant databases it may hold
    conn_budget  integer NOT NULL CHECK (conn_budget > 0), -- most connections tenant pools may hold on it
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Plans: what a tenant buys. The router's limits live here; billing prices
-- come with their own versioned table.
CREATE TABLE plans (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$'),
    max_conns     integer NOT NULL CHECK (max_conns > 0),     -- per-tenant pool size
    rate_per_sec  integer NOT NULL CHECK (rate_per_sec > 0),  -- tenant API requests per second
    rate_burst    integer NOT NULL CHECK (rate_burst > 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst) VALUES
    ('basic', 2, 20, 40),
    ('pro', 5, 100, 200),
    ('enterprise', 10, 500, 1000);

-- Tenants. server_id is nullable: a tenant is placed after it is created, and a
-- later pooled tier will hold tenants without a database of their own.
CREATE TABLE tenants (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug               text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9-]{2,62}$'),
    name               text NOT NULL,
    plan               text NOT NULL REFERENCES plans (name),
    state              text NOT NULL CHECK (state IN ('provisioning', 'active', 'suspended', 'deleting', 'deleted', 'failed')),
    server_id          bigint REFERENCES servers (id),
    db_name            text,
    db_role            text,
    credentials_sealed bytea,                -- the role's password, AES-GCM sealed
    schema_version     bigint NOT NULL DEFAULT 0,
    schema_dirty       boolean NOT NULL DEFAULT false,
    last_error         text NOT NULL DEFAULT '',
    delete_after       timestamptz,          -- end of the grace period of a soft delete
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    state_changed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_state_idx ON tenants (state);
CREATE INDEX tenants_server_idx ON tenants (server_id);

-- API keys: only a hash is kept; the prefix is for display.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix       text NOT NULL,
    hash         bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- Who did what, when. No foreign keys: the log outlives what it speaks of.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    tenant_id  uuid,
    subject    text NOT NULL DEFAULT '',
    from_state text,
    to_state   text,
    reason     text NOT NULL DEFAULT '',
    details    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, at);
CREATE INDEX audit_events_at_idx ON audit_events (at);

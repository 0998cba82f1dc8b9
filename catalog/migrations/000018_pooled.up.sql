-- The pooled tier: small tenants share a pool database on a server, under
-- row-level security, instead of a database and a role each.

-- A plan says which tier its tenants get.
ALTER TABLE plans ADD COLUMN isolation text NOT NULL DEFAULT 'dedicated' CHECK (isolation IN ('dedicated', 'pooled'));
INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('free', 2, 10, 20, 'pooled');
-- Free: no base fee; 10,000 API calls and 100 MiB included, then the usual prices.
INSERT INTO plan_versions (plan, version, currency, base_fee, effective_from) VALUES ('free', 1, 'usd', 0, '2000-01-01');
INSERT INTO plan_meter_prices (plan, version, meter, included, unit_price_micros, per_units) VALUES
    ('free', 1, 'api_calls', 10000, 1000000, 1),
    ('free', 1, 'storage_bytes', 104857600, 25000000, 1073741824);

-- Pool databases: one or more per server, each for up to capacity tenants.
-- The database and the login role the routers use there are both named
-- tp_pool_<id>; the role owns nothing and has no BYPASSRLS, its password is
-- sealed here (catalog.Cipher, bound to the row).
CREATE TABLE pool_databases (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_id          bigint NOT NULL REFERENCES servers (id),
    capacity           integer NOT NULL CHECK (capacity > 0),
    state              text NOT NULL DEFAULT 'provisioning' CHECK (state IN ('provisioning', 'active', 'failed')),
    credentials_sealed bytea NOT NULL,
    schema_version     bigint NOT NULL DEFAULT 0,
    schema_dirty       boolean NOT NULL DEFAULT false,
    last_error         text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pool_databases_server_idx ON pool_databases (server_id);

-- A pooled tenant has a pool and neither a server of its own nor a database
-- or role: the parts that work on tenant databases (fan-out, the storage
-- collector, moves, the reconciler) look for server_id and pass it by.
ALTER TABLE tenants ADD COLUMN pool_id bigint REFERENCES pool_databases (id);
ALTER TABLE tenants ADD CONSTRAINT tenants_one_tier CHECK (pool_id IS NULL OR (server_id IS NULL AND db_name IS NULL));
CREATE INDEX tenants_pool_idx ON tenants (pool_id) WHERE pool_id IS NOT NULL;

-- Fan-out migrates a pool database as one target of its own: its run row
-- carries pool_id, and the pool's target_id in tenant_id (the key every
-- run row is claimed, leased and finished by), which is no tenant's id.
ALTER TABLE pool_databases ADD COLUMN target_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE;
ALTER TABLE migration_run_tenants DROP CONSTRAINT migration_run_tenants_tenant_id_fkey;
ALTER TABLE migration_run_tenants ADD COLUMN pool_id bigint REFERENCES pool_databases (id);

-- Promotion and demotion are moves of one tenant's rows between a pool
-- database and a database of its own (package mover): kind says which, and
-- pool_id names the pool database (the source of a promotion, the target of a
-- demotion), which may be on the same server as the other side.
ALTER TABLE moves ADD COLUMN kind text NOT NULL DEFAULT 'move' CHECK (kind IN ('move', 'promote', 'demote'));
ALTER TABLE moves ADD COLUMN pool_id bigint REFERENCES pool_databases (id) CHECK ((kind = 'move') = (pool_id IS NULL));
ALTER TABLE moves DROP CONSTRAINT moves_check;
ALTER TABLE moves ADD CONSTRAINT moves_check CHECK (kind <> 'move' OR to_server_id <> from_server_id);

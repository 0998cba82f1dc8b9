-- One schema, two tiers. Every tenant table carries tenant_id in its primary
-- key, (tenant_id, id), so the same migrations build a dedicated database (one
-- tenant) and a pool database (many), and one tenant's rows can be copied
-- between them with a filter. Every tenant table also gets row-level security,
-- enabled and forced, with the two policies below: a later migration that adds
-- a table must do the same (migrations_test checks every table).

-- The tenant a session acts for: the transaction-local setting the router
-- makes on a pool database (set_config('tenantplane.tenant_id', id, true));
-- where it is missing, the tenant whose dedicated database this is, read from
-- its name (t_<tenant id without hyphens>); else NULL, which matches no row:
-- a pool database (tp_pool_<n>) without the setting shows nothing and takes
-- no insert. STABLE and one expression, so the planner inlines it and uses
-- the (tenant_id, ...) indexes.
CREATE FUNCTION tenantplane_tenant_id() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        nullif(current_setting('tenantplane.tenant_id', true), ''),
        CASE WHEN current_database() ~ '^t_[0-9a-f]{32}$' THEN substr(current_database(), 3) END
    )::uuid
$$;

-- Existing rows of a dedicated database are its tenant's: the default is
-- evaluated once, here, for them (a non-volatile default), from the
-- database's name. A database holding rows whose tenant cannot be told fails
-- this step on NOT NULL and stays at version 1, untouched.
ALTER TABLE users ADD COLUMN tenant_id uuid NOT NULL DEFAULT tenantplane_tenant_id();
ALTER TABLE users DROP CONSTRAINT users_pkey;
ALTER TABLE users ADD PRIMARY KEY (tenant_id, id);
-- An email is unique within its tenant, not across a pool.
ALTER TABLE users DROP CONSTRAINT users_email_key;
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (tenant_id, email);
DROP INDEX users_created_idx;
CREATE INDEX users_created_idx ON users (tenant_id, created_at, id);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
-- Everyone but the database's owner sees and writes only the current
-- tenant's rows.
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = tenantplane_tenant_id())
    WITH CHECK (tenant_id = tenantplane_tenant_id());
-- The owner (the server's admin role, which migrates, copies and moves rows)
-- sees every row: it could turn row-level security off anyway. The router's
-- role on a pool database owns nothing there, so this policy never applies
-- to it (PostgreSQL 14 and later).
CREATE POLICY database_owner ON users TO pg_database_owner
    USING (true) WITH CHECK (true);

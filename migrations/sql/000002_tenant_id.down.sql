-- Back to one tenant per database. A pool database (rows of several tenants)
-- cannot go back: the primary key on id alone and the email uniqueness would
-- mix tenants, so this fails on a pool database with more than one tenant's
-- emails colliding, and leaves it at version 2.
DROP POLICY database_owner ON users;
DROP POLICY tenant_isolation ON users;
ALTER TABLE users NO FORCE ROW LEVEL SECURITY;
ALTER TABLE users DISABLE ROW LEVEL SECURITY;
DROP INDEX users_created_idx;
CREATE INDEX users_created_idx ON users (created_at, id);
ALTER TABLE users DROP CONSTRAINT users_email_key;
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);
ALTER TABLE users DROP CONSTRAINT users_pkey;
ALTER TABLE users ADD PRIMARY KEY (id);
ALTER TABLE users DROP COLUMN tenant_id;
DROP FUNCTION tenantplane_tenant_id();

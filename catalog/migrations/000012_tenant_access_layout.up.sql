-- access_layout is the ownership and grant layout a tenant's database was
-- last brought to:
--   1: the database belonged to the tenant role, and so did its schema public
--      (through pg_database_owner): the tenant could create objects and alter
--      its database;
--   2: the database, its schema and tables belong to the server's admin role;
--      the tenant role may connect and read and write its rows, nothing more.
-- Rows that exist now were made under layout 1; new tenants start at 2. The
-- provisioner converts the rest, once per server, when it starts.
ALTER TABLE tenants ADD COLUMN access_layout smallint NOT NULL DEFAULT 1;
ALTER TABLE tenants ALTER COLUMN access_layout SET DEFAULT 2;

-- A tenant's data: scheduled backups and their restores, exports, erasure
-- (package datarights), and tax on invoices (package billing).

-- Each plan states how often its tenants are backed up and how long a
-- backup is kept.
ALTER TABLE plans
    ADD COLUMN backup_interval  interval NOT NULL DEFAULT '24 hours' CHECK (backup_interval >= '1 second'),
    ADD COLUMN backup_retention interval NOT NULL DEFAULT '7 days' CHECK (backup_retention >= '1 second');
UPDATE plans SET backup_retention = '30 days' WHERE name = 'pro';
UPDATE plans SET backup_interval = '6 hours', backup_retention = '90 days' WHERE name = 'enterprise';

-- A logical backup (pg_dump -Fc) of one tenant database, in the backup
-- directory. Its row outlives its file: expired and erased ones say when
-- the file went.
CREATE TABLE backups (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    server_id      bigint REFERENCES servers (id), -- the server it is taken from
    trigger        text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'failed', 'expired', 'erased')),
    file           text NOT NULL DEFAULT '',
    size_bytes     bigint,
    sha256         text,
    schema_version bigint,
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text NOT NULL DEFAULT '',
    actor          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    expires_at     timestamptz,
    deleted_at     timestamptz
);
-- One open backup per tenant: schedulers on several replicas cannot double one.
CREATE UNIQUE INDEX backups_open_idx ON backups (tenant_id) WHERE state IN ('pending', 'running');
CREATE INDEX backups_tenant_idx ON backups (tenant_id, id);
CREATE INDEX backups_expiry_idx ON backups (expires_at) WHERE state = 'done';
CREATE INDEX backups_running_idx ON backups (server_id) WHERE state = 'running';

-- A restore of a backup, into a new tenant or in place.
CREATE TABLE restores (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    backup_id        bigint NOT NULL REFERENCES backups (id),
    source_tenant_id uuid NOT NULL REFERENCES tenants (id),
    tenant_id        uuid NOT NULL REFERENCES tenants (id), -- restored into
    mode             text NOT NULL CHECK (mode IN ('new_tenant', 'in_place')),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
    resume_after     boolean NOT NULL DEFAULT false, -- in place: the tenant was active before
    tables           jsonb NOT NULL DEFAULT '{}',    -- rows per table, read back after the restore
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text NOT NULL DEFAULT '',
    actor            text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX restores_tenant_idx ON restores (source_tenant_id, id);

-- An export of a tenant's data: a zip of JSON lines per table and a manifest.
CREATE TABLE exports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    include_dump boolean NOT NULL DEFAULT false,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed', 'expired', 'erased')),
    file         text NOT NULL DEFAULT '',
    size_bytes   bigint,
    sha256       text,
    manifest     jsonb,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text NOT NULL DEFAULT '',
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    expires_at   timestamptz,
    deleted_at   timestamptz
);
CREATE INDEX exports_tenant_idx ON exports (tenant_id, id);
CREATE INDEX exports_expiry_idx ON exports (expires_at) WHERE state = 'done';

-- The record of a tenant's erasure: what was removed (with hashes), what
-- was kept and why. The tenant row stays as the tombstone of its slug.
CREATE TABLE erasures (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    slug        text NOT NULL,
    state       text NOT NULL DEFAULT 'erasing' CHECK (state IN ('erasing', 'done')),
    removed     jsonb NOT NULL DEFAULT '[]',
    kept        jsonb NOT NULL DEFAULT '[]',
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- Tax (billing): the tenant's billing address, sent to its Stripe customer.
CREATE TABLE billing_addresses (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    country     text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    postal_code text NOT NULL DEFAULT '',
    state       text NOT NULL DEFAULT '',
    city        text NOT NULL DEFAULT '',
    line1       text NOT NULL DEFAULT '',
    synced_at   timestamptz, -- when Stripe's customer last took it
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The tax Stripe computed for an invoice (automatic tax), in minor units.
ALTER TABLE invoices ADD COLUMN tax bigint, ADD COLUMN automatic_tax boolean NOT NULL DEFAULT false;

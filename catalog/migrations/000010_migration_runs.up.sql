-- Migration fan-out: a run takes a set of tenant databases to one schema
-- version. The run's rows are its durable state; River jobs (queue
-- fanout_<schema hash>) are the workers that drive it.
CREATE TABLE migration_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state          text NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'paused', 'halted', 'cancelled', 'done', 'failed')),
    target_version bigint NOT NULL CHECK (target_version >= 0),
    schema_hash    text NOT NULL,               -- the tenant migrations the run was made with; only processes with the same set work on it
    concurrency    integer NOT NULL CHECK (concurrency > 0),
    per_server     integer NOT NULL CHECK (per_server > 0),
    canary         integer NOT NULL CHECK (canary >= 0),
    max_failures   integer NOT NULL CHECK (max_failures >= 0),
    all_tenants    boolean NOT NULL,            -- no subset was named: tenants that appear while it runs join it
    generation     integer NOT NULL DEFAULT 1,  -- bumped by resume and revival; workers of an older generation stop
    heartbeat_at   timestamptz NOT NULL DEFAULT now(), -- last sign of a live worker
    actor          text NOT NULL,
    reason         text NOT NULL DEFAULT '',    -- why it halted, or who cancelled it
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
-- One open run at a time: two runs must never pull one tenant two ways.
CREATE UNIQUE INDEX migration_runs_one_open ON migration_runs ((true)) WHERE state IN ('running', 'paused', 'halted');
CREATE INDEX migration_runs_created_idx ON migration_runs (created_at DESC);

-- One row per tenant of a run. A worker claims a row by setting lease_owner
-- and lease_until, and keeps the lease alive while it migrates; a row whose
-- lease ran out (its worker died) is claimed again.
CREATE TABLE migration_run_tenants (
    run_id       bigint NOT NULL REFERENCES migration_runs (id) ON DELETE CASCADE,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    server_id    bigint NOT NULL REFERENCES servers (id),
    position     integer NOT NULL,              -- claim order: servers interleaved
    canary       boolean NOT NULL DEFAULT false,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    from_version bigint NOT NULL,               -- the catalog's copy when the run was made; the database's own when first tried
    to_version   bigint NOT NULL,
    version      bigint,                        -- where the database is after the last attempt
    dirty        boolean NOT NULL DEFAULT false,
    attempts     integer NOT NULL DEFAULT 0,
    error        text NOT NULL DEFAULT '',
    note         text NOT NULL DEFAULT '',      -- why it was skipped, or what the last retry was
    worker       text NOT NULL DEFAULT '',      -- the process that last claimed it
    lease_owner  uuid,
    lease_until  timestamptz,
    not_before   timestamptz,                   -- a retried row waits until then
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, tenant_id)
);
CREATE INDEX migration_run_tenants_claim_idx ON migration_run_tenants (run_id, canary DESC, position)
    WHERE state IN ('pending', 'running');
CREATE INDEX migration_run_tenants_running_idx ON migration_run_tenants (run_id, server_id) WHERE state = 'running';
CREATE INDEX migration_run_tenants_tenant_idx ON migration_run_tenants (tenant_id);

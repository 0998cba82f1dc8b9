-- Moves: a tenant's database carried from one server to another (package
-- mover). A move is a ledger driven by a durable job through its phases;
-- a restarted process resumes it from the phase recorded here.
CREATE TABLE moves (
    id             bigserial PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    from_server_id bigint NOT NULL REFERENCES servers (id),
    to_server_id   bigint NOT NULL REFERENCES servers (id) CHECK (to_server_id <> from_server_id),
    mode           text NOT NULL CHECK (mode IN ('online', 'copy')),
    mode_reason    text NOT NULL DEFAULT '',
    phase          text NOT NULL DEFAULT 'pending' CHECK (phase IN
                   ('pending', 'copying', 'catching_up', 'fenced', 'verifying', 'switched', 'done', 'aborted', 'reverted')),
    reverts        bigint REFERENCES moves (id), -- the move this one takes back
    cancel_requested boolean NOT NULL DEFAULT false,
    rows_copied    bigint NOT NULL DEFAULT 0,
    bytes_copied   bigint NOT NULL DEFAULT 0,
    lag_bytes      bigint NOT NULL DEFAULT 0,
    fenced_at      timestamptz,
    switched_at    timestamptz,
    write_pause_ms bigint,
    keep_until     timestamptz, -- the source is kept, fenced, until then, for a revert
    source_dropped boolean NOT NULL DEFAULT false,
    last_error     text NOT NULL DEFAULT '',
    actor          text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
-- One open move per tenant.
CREATE UNIQUE INDEX moves_one_open ON moves (tenant_id) WHERE phase NOT IN ('done', 'aborted', 'reverted');
CREATE INDEX moves_created ON moves (created_at DESC, id DESC);

-- move_id names a tenant's open move: lifecycle changes (suspend, delete,
-- rotate) wait for it or are refused. held makes every router replica hold
-- the tenant's requests (bounded) while the move's fence is up.
ALTER TABLE tenants ADD COLUMN move_id bigint REFERENCES moves (id);
ALTER TABLE tenants ADD COLUMN held boolean NOT NULL DEFAULT false;

-- Fleet operations (package mover): an evacuation moves every tenant off a
-- server, a rebalance carries out a plan of moves across the fleet. Each is
-- a ledger driven by one durable job that starts the moves (one per tenant)
-- as slots free up; a restarted process resumes it from here and the moves.
ALTER TABLE servers DROP CONSTRAINT servers_state_check;
ALTER TABLE servers ADD CONSTRAINT servers_state_check CHECK (state IN ('active', 'draining', 'evacuating', 'empty'));

CREATE TABLE evacuations (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL DEFAULT 'evacuate' CHECK (kind IN ('evacuate', 'rebalance')),
    server_id   bigint REFERENCES servers (id) CHECK ((kind = 'evacuate') = (server_id IS NOT NULL)),
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'cancelled', 'done', 'failed')),
    concurrency integer NOT NULL CHECK (concurrency > 0),
    per_server  integer NOT NULL CHECK (per_server > 0),
    mode        text NOT NULL DEFAULT '' CHECK (mode IN ('', 'online', 'copy')),
    last_error  text NOT NULL DEFAULT '',
    actor       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- One open evacuation per server; one open rebalance at a time.
CREATE UNIQUE INDEX evacuations_one_open ON evacuations (coalesce(server_id, 0)) WHERE state IN ('running', 'paused');

-- The tenants of an evacuation: each is pending until its move starts,
-- moving while it runs, then moved, failed (with the error) or skipped (the
-- evacuation was cancelled first). to_server_id is a rebalance's planned
-- target; an evacuation picks one as the move starts.
CREATE TABLE evacuation_tenants (
    evacuation_id bigint NOT NULL REFERENCES evacuations (id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    position      integer NOT NULL,
    from_server_id bigint NOT NULL REFERENCES servers (id),
    to_server_id  bigint REFERENCES servers (id),
    reason        text NOT NULL DEFAULT '',
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'moving', 'moved', 'failed', 'skipped')),
    move_id       bigint REFERENCES moves (id),
    error         text NOT NULL DEFAULT '',
    PRIMARY KEY (evacuation_id, tenant_id)
);

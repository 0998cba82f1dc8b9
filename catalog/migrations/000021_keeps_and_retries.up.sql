-- A moved tenant's kept source kept in step (package mover): after the
-- switch, where the target server allows logical replication, a slot named
-- like the move (tenantplane_move_<id>) on the target streams the tenant's
-- writes back into the fenced source, so that a revert only catches up its
-- last changes and switches back instead of copying every row.
ALTER TABLE moves ADD COLUMN keep_in_step boolean NOT NULL DEFAULT false;
-- Why the source is, or is not (any more), kept in step.
ALTER TABLE moves ADD COLUMN keep_reason text NOT NULL DEFAULT '';
-- How far the kept source is behind the tenant's live database, in bytes of WAL.
ALTER TABLE moves ADD COLUMN keep_lag_bytes bigint NOT NULL DEFAULT 0;
-- A revert that switches back over the kept stream of the move it reverts.
ALTER TABLE moves ADD COLUMN in_step boolean NOT NULL DEFAULT false;

-- An evacuation tries a tenant whose move fails up to max_attempts times;
-- attempts keeps each failed attempt ({move_id, error, at}), retry_at when
-- the next may start.
ALTER TABLE evacuations ADD COLUMN max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 10);
ALTER TABLE evacuation_tenants ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';
ALTER TABLE evacuation_tenants ADD COLUMN retry_at timestamptz;

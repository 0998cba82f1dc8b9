-- A pooled tenant moved to another pool database (package mover, kind
-- repool): pool_id is the pool it leaves (as a promotion's), to_pool_id the
-- pool it goes to; only a repool has one.
ALTER TABLE moves DROP CONSTRAINT moves_kind_check;
ALTER TABLE moves ADD CONSTRAINT moves_kind_check CHECK (kind IN ('move', 'promote', 'demote', 'repool'));
ALTER TABLE moves ADD COLUMN to_pool_id bigint REFERENCES pool_databases (id);
ALTER TABLE moves ADD CONSTRAINT moves_to_pool_check CHECK ((kind = 'repool') = (to_pool_id IS NOT NULL));

-- A pool database left with no tenant on a server an evacuation emptied is
-- retired: it takes no tenant and fan-out passes it by; POST
-- /admin/v1/pools/{id}/retry makes it active again.
ALTER TABLE pool_databases DROP CONSTRAINT pool_databases_state_check;
ALTER TABLE pool_databases ADD CONSTRAINT pool_databases_state_check CHECK (state IN ('provisioning', 'active', 'failed', 'retired'));

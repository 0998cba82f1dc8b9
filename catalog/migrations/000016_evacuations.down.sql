DROP TABLE evacuation_tenants;
DROP TABLE evacuations;
UPDATE servers SET state = 'draining' WHERE state IN ('evacuating', 'empty');
ALTER TABLE servers DROP CONSTRAINT servers_state_check;
ALTER TABLE servers ADD CONSTRAINT servers_state_check CHECK (state IN ('active', 'draining'));

DROP TABLE audit_events;
DROP TABLE api_keys;
DROP TABLE tenants;
DROP TABLE servers;
DROP TABLE plans;

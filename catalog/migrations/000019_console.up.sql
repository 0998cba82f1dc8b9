-- The operator console (package controlplane/console): a session per
-- sign-in, kept here so every replica knows it and sign-out ends it
-- everywhere. Only a hash of the cookie's token is stored.
CREATE TABLE console_sessions (
    token_hash bytea PRIMARY KEY,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);

-- Tenant listings page by (created_at, id): with this index a page of a
-- large fleet is an index range scan, not a sort of every tenant.
CREATE INDEX tenants_created_idx ON tenants (created_at, id);

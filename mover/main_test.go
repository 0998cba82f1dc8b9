package mover_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	// TestMoveKilledInEachPhase starts this binary again (helperproc.Start) as
	// the process it kills: the variable says so, and no test runs.
	if os.Getenv(moveHelperEnv) != "" {
		helperproc.Run("move", moveHelperProcess)
	}
	pgtest.Main(m)
}

// testTimeout bounds each test's database work.
const testTimeout = 2 * time.Minute

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// tenantDB is a tenant's database made the way the provisioner makes one on
// a managed server: owned by the server's admin role (pgtest.ManagedRole,
// CREATEDB CREATEROLE), with a login role that may only connect and use the
// rows.
type tenantDB struct {
	server   *pgtest.Server
	name     string
	role     string
	admin    *pgx.Conn // to the tenant database, as the admin role
	serverDB *pgx.Conn // to database postgres, as the admin role
	roleDSN  string    // the tenant role's
}

const rolePassword = "tenant-secret"

// newTenantDB makes a tenant database on srv with schema ddl (run as the
// admin role, like the tenant migrations) and the tenant role's grants.
func newTenantDB(t *testing.T, srv *pgtest.Server, ddl string) *tenantDB {
	t.Helper()
	ctx := testContext(t)
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	suffix := hex.EncodeToString(rnd[:])
	td := &tenantDB{server: srv, name: "tenant_" + suffix, role: "tenant_" + suffix}

	serverDB, err := pgx.Connect(ctx, srv.ManagedDSN(t, "postgres"))
	require.NoError(t, err)
	t.Cleanup(func() { serverDB.Close(context.Background()) })
	td.serverDB = serverDB
	db, role := pgx.Identifier{td.name}.Sanitize(), pgx.Identifier{td.role}.Sanitize()
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN NOINHERIT PASSWORD '" + rolePassword + "'",
		"GRANT " + role + " TO CURRENT_USER",
		"CREATE DATABASE " + db,
		"REVOKE ALL ON DATABASE " + db + " FROM PUBLIC",
		"GRANT CONNECT ON DATABASE " + db + " TO " + role,
	} {
		_, err := serverDB.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept tenant database %s on %s", td.name, srv.DSN(td.name))
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = serverDB.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
		_, _ = serverDB.Exec(ctx, "DROP ROLE IF EXISTS "+role)
	})

	admin, err := pgx.Connect(ctx, srv.ManagedDSN(t, td.name))
	require.NoError(t, err)
	t.Cleanup(func() { admin.Close(context.Background()) })
	td.admin = admin
	_, err = admin.Exec(ctx, ddl)
	require.NoError(t, err)
	for _, stmt := range []string{
		"REVOKE ALL ON SCHEMA public FROM PUBLIC",
		"GRANT USAGE ON SCHEMA public TO " + role,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + role,
		"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO " + role,
		"REVOKE ALL ON TABLE schema_migrations FROM " + role,
	} {
		_, err := admin.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}

	u, err := url.Parse(srv.DSN(td.name))
	require.NoError(t, err)
	u.User = url.UserPassword(td.role, rolePassword)
	td.roleDSN = u.String()
	return td
}

// connect opens a connection to the tenant database as the tenant role.
func (td *tenantDB) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, td.roleDSN)
}

// schemaDDL is a tenant schema with what a copy must get right: foreign keys
// whose order differs from the tables' names (orders references users), a
// table that references itself, a serial, an identity column that is
// GENERATED ALWAYS, a stored generated column, a free-standing sequence, and
// types whose text needs escaping (newlines, tabs, backslashes, arrays,
// bytea, jsonb).
const schemaDDL = `
CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
INSERT INTO schema_migrations VALUES (3, false);
CREATE TABLE accounts (
	id         bigserial PRIMARY KEY,
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE users (
	id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	account_id  bigint NOT NULL REFERENCES accounts,
	email       text NOT NULL UNIQUE,
	email_lower text GENERATED ALWAYS AS (lower(email)) STORED,
	profile     jsonb,
	score       double precision,
	note        text
);
CREATE TABLE orders (
	id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	user_id   bigint NOT NULL REFERENCES users,
	amount    numeric(12,2) NOT NULL,
	placed_on date,
	tags      text[],
	blob      bytea
);
CREATE TABLE audit (
	id        serial PRIMARY KEY,
	parent_id int REFERENCES audit,
	msg       text
);
CREATE SEQUENCE invoice_numbers START 1000;
`

// Row counts of fillSource.
const (
	accountRows = 100
	userRows    = 10_000
	orderRows   = 20_000
	auditRows   = 1_000
)

// fillSource writes rows into a database of schemaDDL, as the tenant role
// would, and uses its sequences.
func fillSource(t *testing.T, td *tenantDB) {
	t.Helper()
	ctx := testContext(t)
	_, err := td.admin.Exec(ctx, `
		INSERT INTO accounts (name) SELECT 'account ' || i FROM generate_series(1, 100) i;
		INSERT INTO users (account_id, email, profile, score, note)
			SELECT 1 + i % 100, 'User' || i || '@Example.com',
				CASE WHEN i % 7 = 0 THEN NULL ELSE jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i)) END,
				i / 3.0, E'line one\nline\ttwo \\ back' || i
			FROM generate_series(1, 10000) i;
		INSERT INTO orders (user_id, amount, placed_on, tags, blob)
			SELECT 1 + i % 10000, (i * 1.37)::numeric(12,2), date '2024-01-01' + i % 365,
				ARRAY['t' || i % 5, 'with "quote"'], decode(md5(i::text), 'hex')
			FROM generate_series(1, 20000) i;
		INSERT INTO audit (msg) SELECT 'event ' || i FROM generate_series(1, 1000) i;
		UPDATE audit SET parent_id = id + 1 WHERE id < 1000;
		SELECT nextval('invoice_numbers') FROM generate_series(1, 42);
		-- A gap: the sequence is past the largest id.
		SELECT nextval('accounts_id_seq') FROM generate_series(1, 5);
	`)
	require.NoError(t, err)
}

package provisioner

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// provisionBothWays makes one tenant by the template path and one from the
// warm pool, on a server registered with the managed role, and returns them
// with their passwords.
func provisionBothWays(t *testing.T, b *testBundle) ([]catalog.Tenant, []string) {
	t.Helper()
	ctx := context.Background()
	var tenants []catalog.Tenant
	var passwords []string
	for _, path := range []string{"template", "warm"} {
		cfg := b.cfg
		cfg.WarmPoolSize = -1
		if path == "warm" {
			cfg.WarmPoolSize = 1
		}
		p := b.start(t, cfg)
		if path == "warm" {
			srv, err := b.store.GetServer(ctx, "pg-1")
			require.NoError(t, err)
			require.Eventually(t, func() bool { return countWarm(t, p, srv) >= 1 }, time.Minute, 20*time.Millisecond)
		}
		tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "by-" + path, Plan: "basic"}, "test")
		require.NoError(t, err)
		tenant, err = p.WaitSettled(ctx, tenant.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tenant.State, tenant.LastError)
		require.NoError(t, p.Stop(ctx))
		_, pw, err := b.store.TenantCredentials(ctx, tenant.ID)
		require.NoError(t, err)
		tenants, passwords = append(tenants, tenant), append(passwords, pw)
	}
	return tenants, passwords
}

// requireLeastPrivilege checks, as the tenant's own role, that it reads and
// writes its rows and can do nothing else: no object of its own anywhere,
// no change to its database, no other tenant's role or database.
func requireLeastPrivilege(t *testing.T, srv *pgtest.Server, tenant catalog.Tenant, password string, other catalog.Tenant) {
	t.Helper()
	ctx := context.Background()
	owner := ""
	super, err := pgx.Connect(ctx, srv.DSN("postgres"))
	require.NoError(t, err)
	require.NoError(t, super.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, tenant.Database).Scan(&owner))
	super.Close(ctx)
	require.Equal(t, pgtest.ManagedRole, owner, "%s: the server's admin role owns the database", tenant.Slug)

	conn, err := pgx.Connect(ctx, withUser(srv.DSN(tenant.Database), tenant.Role, password))
	require.NoError(t, err, "%s: the tenant role connects to its own database", tenant.Slug)
	defer conn.Close(ctx)
	var id string
	require.NoError(t, conn.QueryRow(ctx, `INSERT INTO users (email) VALUES ('own@example.com') RETURNING id`).Scan(&id), tenant.Slug)
	_, err = conn.Exec(ctx, `UPDATE users SET name = 'Own' WHERE id = $1`, id)
	require.NoError(t, err, tenant.Slug)
	var name string
	require.NoError(t, conn.QueryRow(ctx, `SELECT name FROM users WHERE id = $1`, id).Scan(&name), tenant.Slug)
	require.Equal(t, "Own", name)
	_, err = conn.Exec(ctx, `DELETE FROM users WHERE id = $1`, id)
	require.NoError(t, err, tenant.Slug)

	for _, stmt := range []string{
		`CREATE TABLE mine (id int)`,
		`CREATE SCHEMA mine`,
		`ALTER DATABASE ` + ident(tenant.Database) + ` SET work_mem = '64MB'`,
		`CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'`,
		`CREATE FUNCTION pg_temp.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'`,
		`CREATE TEMP TABLE mine (id int)`,
		`SET ROLE ` + ident(other.Role),
		`ALTER TABLE users ADD COLUMN mine int`,
		`DROP TABLE users`,
		`TRUNCATE users`,
		`UPDATE schema_migrations SET dirty = true`,
	} {
		_, err := conn.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr) && pgErr.Code == "42501", "%s: %s must be refused for lack of privilege, got %v", tenant.Slug, stmt, err)
	}
	_, err = pgx.Connect(ctx, withUser(srv.DSN(other.Database), tenant.Role, password))
	require.ErrorContains(t, err, "permission denied for database", "%s: another tenant's database", tenant.Slug)
}

// TestTenantRoleMayUseItsRowsAndNothingElse: on a server registered with a
// CREATEDB CREATEROLE role, tenants made either way (template, warm pool)
// get a role that connects to its own database and uses its rows, and is
// refused everything else.
func TestTenantRoleMayUseItsRowsAndNothingElse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tenants, passwords := provisionBothWays(t, b)
	requireLeastPrivilege(t, b.server, tenants[0], passwords[0], tenants[1])
	requireLeastPrivilege(t, b.server, tenants[1], passwords[1], tenants[0])
}

// TestOlderAccessLayoutIsConverted: tenants made under the layout before
// this one (the tenant role owned its database and had TEMPORARY), which
// created a schema and a table of its own there, are converted by
// the next start of the provisioner: the table is taken from it, and the
// same checks as for a new tenant pass. The catalog records one conversion
// per tenant; a second pass changes nothing.
func TestOlderAccessLayoutIsConverted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	tenants, passwords := provisionBothWays(t, b)

	super, err := pgx.Connect(ctx, b.server.DSN("postgres"))
	require.NoError(t, err)
	defer super.Close(ctx)
	for i, tn := range tenants {
		// What the previous version made.
		for _, s := range []string{
			"ALTER DATABASE " + ident(tn.Database) + " OWNER TO " + ident(tn.Role),
			"GRANT CONNECT, TEMPORARY ON DATABASE " + ident(tn.Database) + " TO " + ident(tn.Role),
		} {
			_, err := super.Exec(ctx, s)
			require.NoError(t, err, s)
		}
		_, err = b.store.Pool().Exec(ctx, `UPDATE tenants SET access_layout = 1 WHERE id = $1`, tn.ID)
		require.NoError(t, err)
		conn, err := pgx.Connect(ctx, withUser(b.server.DSN(tn.Database), tn.Role, passwords[i]))
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `CREATE SCHEMA legacy; CREATE TABLE legacy.notes (id int)`)
		require.NoError(t, err, "the old layout let the tenant create schemas, and tables in them")
		conn.Close(ctx)
	}

	p := b.start(t, b.cfg)
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, b.store.Pool().QueryRow(ctx, `SELECT count(*) FROM tenants WHERE access_layout < $1`, accessLayout).Scan(&left))
		return left == 0
	}, 30*time.Second, 20*time.Millisecond, "the provisioner's start converts older tenants")
	for i, tn := range tenants {
		requireLeastPrivilege(t, b.server, tn, passwords[i], tenants[1-i])
		owner := ""
		conn, err := pgx.Connect(ctx, b.server.DSN(tn.Database))
		require.NoError(t, err)
		require.NoError(t, conn.QueryRow(ctx, `SELECT tableowner FROM pg_tables WHERE schemaname = 'legacy' AND tablename = 'notes'`).Scan(&owner))
		conn.Close(ctx)
		require.Equal(t, pgtest.ManagedRole, owner, "what the tenant made is the admin's now")
		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID, Action: "tenant.access_converted"})
		require.NoError(t, err)
		require.Len(t, events, 1)
	}

	srv, err := b.store.GetServer(ctx, "pg-1")
	require.NoError(t, err)
	n, err := p.convertAccess(ctx, srv)
	require.NoError(t, err)
	require.Zero(t, n, "a second pass finds nothing to convert")
	for _, tn := range tenants {
		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID, Action: "tenant.access_converted"})
		require.NoError(t, err)
		require.Len(t, events, 1, "and records nothing")
	}
}

// TestRefillDropsOnlyStaleWarmRoles: a warm role that no database grants
// anything to (left by a crash) is dropped by the refill; one whose database
// a claim has just renamed, and which still holds its CONNECT there, is not.
func TestRefillDropsOnlyStaleWarmRoles(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg := b.cfg
	cfg.WarmPoolSize = 1
	p, err := New(b.store, cfg) // not started: the test runs the refill itself
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Stop(ctx) })
	srv, err := b.store.GetServer(ctx, "pg-1")
	require.NoError(t, err)

	admin, err := pgx.Connect(ctx, b.server.ManagedDSN(t, "postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	stale, claiming := p.warmPattern()+"deadbeef", p.warmPattern()+"0badcafe"
	for _, s := range []string{
		"CREATE ROLE " + ident(stale) + " NOLOGIN",
		"CREATE ROLE " + ident(claiming) + " NOLOGIN",
		"CREATE DATABASE t_being_claimed",
		"GRANT CONNECT ON DATABASE t_being_claimed TO " + ident(claiming),
	} {
		_, err := admin.Exec(ctx, s)
		require.NoError(t, err, s)
	}
	require.NoError(t, p.refillServer(ctx, srv))
	var staleLeft, claimingLeft bool
	require.NoError(t, admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)`,
		stale, claiming).Scan(&staleLeft, &claimingLeft))
	require.False(t, staleLeft, "a warm role nothing grants to is dropped")
	require.True(t, claimingLeft, "a warm role still granted CONNECT is left to its claimer")
	_, err = admin.Exec(ctx, "DROP DATABASE t_being_claimed")
	require.NoError(t, err)
}

package provisioner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/migrations"
)

func superConn(t *testing.T, srv *pgtest.Server, database string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), srv.DSN(database))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Every tenant table, in a database the tenant migrations build, has
// tenant_id first in its primary key and row-level security enabled and
// forced with the two policies; a migration adding a table without them
// fails this test.
func TestTenantSchemaScopesEveryTableByTenant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	p := b.start(t, Config{Logger: b.cfg.Logger, WarmPoolSize: -1})
	pd, err := p.CreatePool(ctx, "pg-1", 10, "test")
	require.NoError(t, err)
	require.Equal(t, catalog.PoolActive, pd.State, pd.LastError)
	require.EqualValues(t, p.Schema().Latest(), pd.SchemaVersion)

	conn := superConn(t, b.server, pd.Name)
	rows, err := conn.Query(ctx, `
		SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
		       (SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		        WHERE i.indrelid = c.oid AND i.indisprimary),
		       ARRAY(SELECT polname::text FROM pg_policy WHERE polrelid = c.oid ORDER BY polname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'`)
	require.NoError(t, err)
	type table struct {
		Name        string
		RLS, Forced bool
		FirstKey    *string
		Policies    []string
	}
	tables, err := pgx.CollectRows(rows, pgx.RowToStructByPos[table])
	require.NoError(t, err)
	require.NotEmpty(t, tables)
	for _, tb := range tables {
		require.True(t, tb.RLS && tb.Forced, "table %s: row-level security enabled and forced", tb.Name)
		require.NotNil(t, tb.FirstKey, "table %s has a primary key", tb.Name)
		require.Equal(t, "tenant_id", *tb.FirstKey, "table %s: tenant_id leads its primary key", tb.Name)
		require.Equal(t, []string{"database_owner", "tenant_isolation"}, tb.Policies, tb.Name)
	}

	// The pool's role owns nothing, may connect to its pool database only,
	// and no one else may connect there but the admin.
	var owned int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)`, pd.Name).Scan(&owned))
	require.Zero(t, owned)
	var dbOwner string
	var publicConnect bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_get_userbyid(datdba), has_database_privilege('public', datname, 'CONNECT') FROM pg_database WHERE datname = $1`, pd.Name).Scan(&dbOwner, &publicConnect))
	require.Equal(t, pgtest.ManagedRole, dbOwner)
	require.False(t, publicConnect)
}

// A dedicated database made before the pooled tier (schema version 1, rows
// without tenant_id) migrates forward keeping every row, each now its
// tenant's, and its role still reads and writes them; a database holding
// rows whose tenant cannot be told (not named t_<id>) refuses the step and
// stays as it was.
func TestDedicatedDatabaseMigratesForwardKeepingItsRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	p, err := New(b.store, b.cfg)
	require.NoError(t, err)
	admin, err := p.admin(ctx, 0, "pg-1")
	require.NoError(t, err)
	var tenantID string
	require.NoError(t, admin.QueryRow(ctx, `SELECT gen_random_uuid()::text`).Scan(&tenantID))
	dbName := catalog.DatabaseName(tenantID)
	for _, name := range []string{dbName, "legacy_unnamed"} {
		_, err = admin.Exec(ctx, "CREATE DATABASE "+ident(name))
		require.NoError(t, err)
		cfg, err := p.dbConfig(ctx, "pg-1", name, "test")
		require.NoError(t, err)
		_, err = migrations.Migrate(ctx, cfg, p.schema, 1, migrations.Limits{})
		require.NoError(t, err)
		conn, err := pgx.ConnectConfig(ctx, cfg)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `INSERT INTO users (email, name) SELECT 'u' || g || '@example.com', 'n' || g FROM generate_series(1, 100) g`)
		require.NoError(t, err)
		conn.Close(ctx)

		_, err = migrations.Migrate(ctx, cfg, p.schema, p.schema.Latest(), migrations.Limits{})
		c := superConn(t, b.server, name)
		var rows, version int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&rows))
		require.Equal(t, 100, rows, "%s: every row kept", name)
		require.NoError(t, c.QueryRow(ctx, `SELECT version FROM schema_migrations`).Scan(&version))
		if name == dbName {
			require.NoError(t, err)
			require.EqualValues(t, p.schema.Latest(), version)
		} else {
			require.Error(t, err, "rows whose tenant cannot be told: the step is refused")
			require.Equal(t, 1, version, "and the database stays at version 1")
		}
	}
	c := superConn(t, b.server, dbName)
	var distinct int
	var got string
	require.NoError(t, c.QueryRow(ctx, `SELECT count(DISTINCT tenant_id), min(tenant_id::text) FROM users`).Scan(&distinct, &got))
	require.Equal(t, 1, distinct)
	require.Equal(t, tenantID, got, "the rows are the database's tenant's")
}

// A pooled tenant's lifecycle: suspend and resume are the catalog's; its
// credentials are the pool's, not its own to rotate; deletion removes its
// rows from the pool database after the grace period, and no one else's.
func TestPooledTenantLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	archive := t.TempDir()
	p := b.start(t, Config{Logger: b.cfg.Logger, WarmPoolSize: -1, DeleteGrace: -1, ArchiveDir: archive})
	pd, err := p.CreatePool(ctx, "pg-1", 10, "test")
	require.NoError(t, err)
	var tenants []catalog.Tenant
	for _, slug := range []string{"small-a", "small-b"} {
		tn, created, err := p.CreateTenant(ctx, TenantSpec{Slug: slug, Plan: "free"}, "test")
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, catalog.TenantActive, tn.State)
		require.Equal(t, pd.Name, tn.Pool)
		tenants = append(tenants, tn)
	}
	// The same request again is the same tenant (idempotent by slug).
	again, created, err := p.CreateTenant(ctx, TenantSpec{Slug: "small-a", Plan: "free"}, "test")
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, tenants[0].ID, again.ID)

	owner := superConn(t, b.server, pd.Name)
	for _, tn := range tenants {
		_, err := owner.Exec(ctx, `INSERT INTO users (tenant_id, email) SELECT $1, 'u' || g || '@example.com' FROM generate_series(1, 10) g`, tn.ID)
		require.NoError(t, err)
	}

	_, err = p.Suspend(ctx, "small-a", "test", "")
	require.NoError(t, err)
	_, err = p.Resume(ctx, "small-a", "test", "")
	require.NoError(t, err)
	_, err = p.RotateCredentials(ctx, "small-a", "test", "")
	require.ErrorIs(t, err, catalog.ErrConflict)
	require.ErrorContains(t, err, "pooled")

	_, err = p.Delete(ctx, "small-a", "test", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		tn, err := b.store.GetTenant(ctx, "small-a")
		return err == nil && tn.State == catalog.TenantDeleted
	}, 30*time.Second, 50*time.Millisecond)
	var mine, others int
	require.NoError(t, owner.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tenant_id = $1), count(*) FILTER (WHERE tenant_id <> $1) FROM users`, tenants[0].ID).Scan(&mine, &others))
	require.Zero(t, mine, "the deleted tenant's rows are gone")
	require.Equal(t, 10, others, "the other tenant's are not")
	var exists bool
	require.NoError(t, owner.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, pd.Name).Scan(&exists))
	require.True(t, exists, "the pool database stays")
	files, err := filepath.Glob(filepath.Join(archive, "small-a-*-users.csv"))
	require.NoError(t, err)
	require.Len(t, files, 1, "the deleted tenant's rows were archived first")
	raw, err := os.ReadFile(files[0])
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	require.Len(t, lines, 11, "a header and its 10 rows")
	require.NotContains(t, string(raw), tenants[1].ID, "and no one else's")
}

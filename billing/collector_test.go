package billing_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestStorageCollectorAcrossTwoServers samples tenant databases on two
// servers, records storage_bytes as the period's maximum, and keeps going
// when one server is down.
func TestStorageCollectorAcrossTwoServers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	servers := map[string]*pgtest.Server{"pg-1": pgtest.NewServer(t), "pg-2": pgtest.NewServer(t)}
	tenants := map[string][]catalog.Tenant{}
	for name, srv := range servers {
		// Registered, and its databases made, as a managed PostgreSQL allows:
		// a CREATEDB CREATEROLE role, and no CONNECT for PUBLIC.
		admin := srv.ManagedDSN(t, "postgres")
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: name, DSN: admin, Capacity: 10, ConnBudget: 10, Actor: "test"})
		require.NoError(t, err)
		for i := range 2 {
			tn := b.addTenant(t, fmt.Sprintf("%s-t%d", name, i), "basic")
			_, err := b.store.Pool().Exec(ctx, `UPDATE tenants SET server_id = (SELECT id FROM servers WHERE name = $2), db_name = $3 WHERE id = $1`,
				tn.ID, name, catalog.DatabaseName(tn.ID))
			require.NoError(t, err)
			exec(t, admin, "CREATE DATABASE "+catalog.DatabaseName(tn.ID))
			exec(t, admin, "REVOKE ALL ON DATABASE "+catalog.DatabaseName(tn.ID)+" FROM PUBLIC")
			tenants[name] = append(tenants[name], tn)
		}
	}
	// One tenant has data; the others are empty databases.
	big := tenants["pg-2"][1]
	bigDSN := servers["pg-2"].DSN(catalog.DatabaseName(big.ID))
	exec(t, bigDSN, `CREATE TABLE blob AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 20000) g`)

	svc := b.service(t, billing.Config{})
	n, err := svc.CollectStorage(ctx)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	sizes := map[string]int64{}
	for name, list := range tenants {
		for _, tn := range list {
			usage, err := b.store.TenantUsage(ctx, tn.ID, time.Now())
			require.NoError(t, err)
			sizes[tn.Slug] = usage[catalog.MeterStorageBytes]
			require.Positive(t, sizes[tn.Slug], tn.Slug)
			// Autovacuum may add a map file or two since: near, not equal.
			require.InDelta(t, actualSize(t, servers[name], tn.ID), sizes[tn.Slug], 1<<20, tn.Slug)
		}
	}
	require.Greater(t, sizes[big.Slug], sizes[tenants["pg-1"][0].Slug]+10<<20, "the tenant with 20 MB of rows is larger")

	// The period keeps its largest sample: shrinking does not lower it.
	exec(t, bigDSN, `DROP TABLE blob`)
	exec(t, bigDSN, `VACUUM FULL`)
	_, err = svc.CollectStorage(ctx)
	require.NoError(t, err)
	usage, err := b.store.TenantUsage(ctx, big.ID, time.Now())
	require.NoError(t, err)
	require.Equal(t, sizes[big.Slug], usage[catalog.MeterStorageBytes])

	// A server down is reported and skipped; the other is still sampled.
	servers["pg-1"].Stop(t)
	exec(t, servers["pg-2"].DSN(catalog.DatabaseName(tenants["pg-2"][0].ID)), `CREATE TABLE grow AS SELECT repeat('y', 1000) AS pad FROM generate_series(1, 20000)`)
	n, err = svc.CollectStorage(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), `server "pg-1"`)
	require.Equal(t, 2, n)
	usage, err = b.store.TenantUsage(ctx, tenants["pg-2"][0].ID, time.Now())
	require.NoError(t, err)
	require.Greater(t, usage[catalog.MeterStorageBytes], sizes[tenants["pg-2"][0].Slug])
}

func exec(t *testing.T, dsn, sql string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), sql)
	require.NoError(t, err)
}

func actualSize(t *testing.T, srv *pgtest.Server, tenantID string) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), srv.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var size int64
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT pg_database_size($1)`, catalog.DatabaseName(tenantID)).Scan(&size))
	return size
}

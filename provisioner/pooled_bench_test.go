package provisioner

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// BenchmarkPooledTenantCreate creates 10,000 pooled tenants in one pool
// database, one at a time, each through CreateTenant (the catalog row in its
// transaction, under the placement lock, and its audit event: a pooled
// tenant is nothing more), and reports the latency of each creation, then
// the catalog's size for them, the pool database's size with one user row
// per tenant, and the Go heap the tenants' records take once read.
//
//	go test -run '^$' -bench PooledTenantCreate -benchtime 1x -timeout 30m ./provisioner
func BenchmarkPooledTenantCreate(b *testing.B) {
	const tenants = 10000
	for range b.N {
		ctx := context.Background()
		bundle := setup(b)
		p, err := New(bundle.store, bundle.cfg)
		require.NoError(b, err)
		pd, err := p.CreatePool(ctx, "pg-1", tenants, "bench")
		require.NoError(b, err)
		var before int64
		require.NoError(b, bundle.store.Pool().QueryRow(ctx, `SELECT pg_total_relation_size('tenants') + pg_total_relation_size('audit_events')`).Scan(&before))

		lat := make([]time.Duration, 0, tenants)
		for i := range tenants {
			start := time.Now()
			_, created, err := p.CreateTenant(ctx, TenantSpec{Slug: fmt.Sprintf("pooled-%05d", i), Plan: "free"}, "bench")
			lat = append(lat, time.Since(start))
			require.NoError(b, err)
			require.True(b, created)
		}
		slices.Sort(lat)
		b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
		b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")

		var after int64
		require.NoError(b, bundle.store.Pool().QueryRow(ctx, `SELECT pg_total_relation_size('tenants') + pg_total_relation_size('audit_events')`).Scan(&after))
		b.ReportMetric(float64(after-before)/(1<<20), "catalog-MiB")

		// One user row per tenant in the pool database, as the admin role.
		conn, err := pgx.Connect(ctx, bundle.server.DSN(pd.Name))
		require.NoError(b, err)
		rows, err := bundle.store.Pool().Query(ctx, `SELECT id::text FROM tenants WHERE pool_id = $1`, pd.ID)
		require.NoError(b, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(b, err)
		_, err = conn.Exec(ctx, `INSERT INTO users (tenant_id, email) SELECT unnest($1::uuid[]), 'first@example.com'`, ids)
		require.NoError(b, err)
		var poolSize int64
		require.NoError(b, conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&poolSize))
		conn.Close(ctx)
		b.ReportMetric(float64(poolSize)/(1<<20), "pool-db-MiB")

		// The tenants' records in memory, as a router's cache would hold them.
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		page, err := bundle.store.ListTenants(ctx, catalog.TenantFilter{Limit: 1000})
		require.NoError(b, err)
		held := page.Tenants
		for page.NextCursor != "" {
			page, err = bundle.store.ListTenants(ctx, catalog.TenantFilter{Limit: 1000, Cursor: page.NextCursor})
			require.NoError(b, err)
			held = append(held, page.Tenants...)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		require.Len(b, held, tenants)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), "records-heap-MiB")
		runtime.KeepAlive(held)
	}
}

package provisioner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// BenchmarkTenantCreate measures create-to-active latency of tenant creation
// through the whole provisioner (catalog row and job, River pickup, role,
// database, grants, activation, the waiter woken by NOTIFY), one tenant at a
// time, on two paths: cloning the server's template, and claiming a ready
// database from the warm pool. The tenant server is either the test harness's
// (tmpfs, fsync off) or a cluster on disk with fsync on, as in production.
//
//	go test -run '^$' -bench TenantCreate -benchtime 1x ./provisioner
func BenchmarkTenantCreate(b *testing.B) {
	const tenants = 40
	for _, server := range []string{"harness", "disk-fsync"} {
		for _, path := range []string{"template", "warm"} {
			b.Run(server+"/"+path, func(b *testing.B) {
				for range b.N {
					lat := createTenants(b, server, path, tenants)
					slices.Sort(lat)
					b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
					b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
					b.ReportMetric(float64(len(lat)), "tenants")
				}
			})
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func createTenants(b *testing.B, server, path string, n int) []time.Duration {
	ctx := context.Background()
	bundle := setup(b)
	serverName := "pg-1"
	if server == "disk-fsync" {
		dsn := diskCluster(b)
		p, err := New(bundle.store, bundle.cfg)
		require.NoError(b, err)
		_, err = p.RegisterServer(ctx, ServerSpec{Name: "disk", DSN: dsn}, "bench")
		require.NoError(b, err)
		serverName = "disk"
	}
	cfg := bundle.cfg
	cfg.Watcher = catalog.NewWatcher(bundle.store, cfg.Logger)
	require.NoError(b, cfg.Watcher.Start(ctx))
	b.Cleanup(cfg.Watcher.Stop)
	cfg.WarmPoolSize = -1
	if path == "warm" {
		cfg.WarmPoolSize = n
	}
	p := bundle.start(b, cfg)
	srv, err := bundle.store.GetServer(ctx, serverName)
	require.NoError(b, err)
	if path == "warm" {
		// Fill the pool first: the figure is the claim, not the refill.
		require.Eventually(b, func() bool { return countWarm(b, p, srv) >= n }, 5*time.Minute, 50*time.Millisecond)
	} else {
		_, err := p.ensureTemplate(ctx, srv) // built once per server, not per tenant
		require.NoError(b, err)
	}
	lat := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := range n {
		start := time.Now()
		t, _, err := p.CreateTenant(ctx, TenantSpec{Slug: fmt.Sprintf("bench-%s-%03d", path, i), Plan: "basic", Server: serverName}, "bench")
		require.NoError(b, err)
		t, err = p.WaitSettled(ctx, t.Slug)
		require.NoError(b, err)
		require.Equal(b, catalog.TenantActive, t.State, t.LastError)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	return lat
}

func countWarm(b testing.TB, p *Provisioner, srv catalog.Server) int {
	pool, err := p.admin(context.Background(), srv.ID, srv.Name)
	require.NoError(b, err)
	var n int
	require.NoError(b, pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)`, p.warmPattern()).Scan(&n))
	return n
}

// diskCluster starts a cluster on disk with PostgreSQL's default durability
// (fsync on), removed when the benchmark ends.
func diskCluster(b *testing.B) string {
	dir, err := os.MkdirTemp("/var/tmp", "tenantplane-bench-")
	require.NoError(b, err)
	require.NoError(b, os.Chmod(dir, 0o755))
	c, err := pgcluster.New(pgcluster.Config{Dir: filepath.Join(dir, "data"), Password: "bench", Settings: map[string]string{"max_connections": "200"}})
	require.NoError(b, err)
	require.NoError(b, c.Start(context.Background()))
	b.Cleanup(func() {
		_ = c.Stop(context.Background())
		_ = os.RemoveAll(dir)
	})
	return c.DSN("postgres")
}

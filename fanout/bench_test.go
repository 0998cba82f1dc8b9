package fanout

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/migrations"
)

// BenchmarkFanout1000 fans a one-column-plus-index migration out to 1,000
// tenant databases on two servers (private clusters of the test harness)
// and reports the wall time, tenants per second, the peak of connections on
// each server, and the time one tenant's migration takes alone, so that the
// ratio to the ideal (N x single / concurrency) shows. The figures go to
// BENCHMARKS.md ("Migration fan-out").
func BenchmarkFanout1000(b *testing.B) {
	const (
		tenants     = 1000
		concurrency = 16
		perServer   = 8
	)
	fb := setupFanout(b)
	ctx := context.Background()
	v1 := fb.service(b, loadSchema(b, schemaDir(b, nil)), false, nil)
	seedStart := time.Now()
	seeded := seedTenants(b, v1, "bench", tenants)
	b.Logf("seeded %d tenant databases in %s", tenants, time.Since(seedStart).Round(time.Millisecond))
	require.NoError(b, v1.Stop(ctx))

	schema := loadSchema(b, schemaDir(b, map[string]string{
		"000003_users_locale.up.sql":   "ALTER TABLE users ADD COLUMN locale text;\nCREATE INDEX users_locale_idx ON users (locale);\n",
		"000003_users_locale.down.sql": "DROP INDEX users_locale_idx;\nALTER TABLE users DROP COLUMN locale;\n",
	}))
	p := fb.service(b, schema, true, func(c *Config) { c.Workers = 2 * concurrency; c.Lease = 30 * time.Second })

	// One tenant's migration alone, up then down, a few times: the unit of work.
	var single time.Duration
	const samples = 5
	for i := range samples {
		tn := seeded[i]
		start := time.Now()
		cfg, err := p.connConfig(ctx, tn.Server, tn.Database, "tenantplane-fanout")
		require.NoError(b, err)
		_, err = migrations.Migrate(ctx, cfg, p.schema, 2, migrations.Limits{})
		require.NoError(b, err)
		single += time.Since(start)
		_, err = migrations.Migrate(ctx, cfg, p.schema, 1, migrations.Limits{})
		require.NoError(b, err)
	}
	single /= samples

	var wall time.Duration
	var peaks map[string]int
	target := int64(3)
	runs := 0
	for b.Loop() {
		stop := fb.sampleConnections(b)
		start := time.Now()
		run, err := p.StartRun(ctx, RunSpec{TargetVersion: &target, Concurrency: concurrency, PerServer: perServer}, "bench")
		require.NoError(b, err)
		run = waitRun(b, fb.runs, run.ID, 10*time.Minute, RunDone, RunFailed, RunHalted)
		wall += time.Since(start)
		peaks = stop()
		require.Equal(b, RunDone, run.State, run.Reason)
		require.Equal(b, tenants, run.Counts.Done)
		target = 5 - target // up (3), then down (2), then up ...
		runs++
	}
	b.StopTimer()
	wall /= time.Duration(runs)

	// None failed, none dirty: as the databases themselves say.
	statusStart := time.Now()
	st, err := p.SchemaStatus(ctx, StatusOptions{})
	require.NoError(b, err)
	require.Empty(b, st.Dirty)
	require.Empty(b, st.Unreachable)
	require.Len(b, st.Histogram, 1)
	require.Equal(b, tenants, st.Histogram[0].Tenants)
	statusTook := time.Since(statusStart)

	// The ideal divides by the concurrency; on this machine the work
	// (mostly Postgres's: a backend per tenant, the DDL) cannot run on more
	// than its cores at once, so the ideal for the hardware is also reported.
	ideal := time.Duration(tenants) * single / concurrency
	idealCPU := time.Duration(tenants) * single / time.Duration(min(concurrency, runtime.NumCPU()))
	b.ReportMetric(wall.Seconds(), "wall_s")
	b.ReportMetric(float64(tenants)/wall.Seconds(), "tenants/s")
	b.ReportMetric(float64(single.Microseconds())/1000, "single_ms")
	b.ReportMetric(ideal.Seconds(), "ideal_s")
	b.ReportMetric(wall.Seconds()/ideal.Seconds(), "wall/ideal")
	b.ReportMetric(wall.Seconds()/idealCPU.Seconds(), "wall/ideal_cores")
	b.ReportMetric(float64(peaks["pg-1"]), "peak_conns_pg-1")
	b.ReportMetric(float64(peaks["pg-2"]), "peak_conns_pg-2")
	b.ReportMetric(statusTook.Seconds(), "status_s")
	b.Logf("%d tenants, concurrency %d, per server %d: wall %s, %.0f tenants/s, single %s, ideal %s (on %d cores %s); peak connections %v; status read in %s",
		tenants, concurrency, perServer, wall.Round(time.Millisecond), float64(tenants)/wall.Seconds(), single.Round(time.Microsecond),
		ideal.Round(time.Millisecond), runtime.NumCPU(), idealCPU.Round(time.Millisecond), peaks, statusTook.Round(time.Millisecond))
}

// sampleConnections counts the client connections on each tenant server
// every 10 ms (the sampler's own excluded) until the returned function is
// called, which returns the peak of each.
func (b *fanoutBundle) sampleConnections(t testing.TB) func() map[string]int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	peaks := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, srv := range b.servers {
		conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
		require.NoError(t, err)
		wg.Go(func() {
			defer conn.Close(context.Background())
			for ctx.Err() == nil {
				var n int
				if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n); err == nil {
					mu.Lock()
					peaks[name] = max(peaks[name], n)
					mu.Unlock()
				}
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
	}
	return func() map[string]int {
		cancel()
		wg.Wait()
		return peaks
	}
}

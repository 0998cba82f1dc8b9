package router

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

// BenchmarkRouterPooled compares, side by side in one run, two servers
// answering GET /v1/users for 1,000 pooled tenants of one pool database
// under Zipf traffic, with the same handler, the same query and the same
// transaction (BEGIN with the tenant's set_config, the page, COMMIT before
// the answer is written):
//
//	direct: one fixed pool on the pool database as its role, the tenant
//	        found in a prepared map by the request's key (the baseline)
//	routed: the router (key resolution, limits, metering, per-tenant slots,
//	        the pool database's pool from its LRU)
//
//	go test -run '^$' -bench RouterPooled -benchtime 1x -timeout 30m ./router
func BenchmarkRouterPooled(b *testing.B) {
	ctx := context.Background()
	store, logger := benchCatalog(b, 20, "bench-pooled", catalog.IsolationPooled)
	cluster := benchCluster(b, 200)
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1})
	require.NoError(b, err)
	_, err = prov.RegisterServer(ctx, provisioner.ServerSpec{Name: "bench", DSN: cluster.DSN("postgres"), Capacity: 10, ConnBudget: 100}, "bench")
	require.NoError(b, err)
	pool, err := prov.CreatePool(ctx, "bench", benchTenants, "bench")
	require.NoError(b, err)
	env := &benchEnv{store: store, logger: logger}
	byHeader := map[string]*resolved{}
	var ids []string
	for i := range benchTenants {
		t, _, err := prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: fmt.Sprintf("pooled-%04d", i), Plan: "bench-pooled"}, "bench")
		require.NoError(b, err)
		_, k, err := store.CreateAPIKey(ctx, t.ID, "bench")
		require.NoError(b, err)
		env.keys, env.tenants, ids = append(env.keys, k), append(env.tenants, t), append(ids, t.ID)
		byHeader["Bearer "+k] = &resolved{tenant: t}
	}
	// Ten users a tenant: 10,000 rows in the pool database.
	admin, err := pgx.Connect(ctx, cluster.DSN(pool.Name))
	require.NoError(b, err)
	_, err = admin.Exec(ctx, `INSERT INTO users (tenant_id, email) SELECT t, 'u' || g || '@example.com' FROM unnest($1::uuid[]) t, generate_series(1, 10) g`, ids)
	require.NoError(b, err)
	_, err = admin.Exec(ctx, `VACUUM ANALYZE users`)
	require.NoError(b, err)
	admin.Close(ctx)
	env.watcher = catalog.NewWatcher(store, logger)
	require.NoError(b, env.watcher.Start(ctx))
	b.Cleanup(env.watcher.Stop)

	r, err := New(Config{Store: store, Watcher: env.watcher, Ready: func(context.Context) error { return nil }, Logger: logger,
		Pools: PoolConfig{PoolDatabaseConns: benchConcurrency, MaxConnIdleTime: 10 * time.Minute}, FlushInterval: time.Second})
	require.NoError(b, err)
	// The direct baseline: one fixed pool on the pool database, as its role.
	role, password, err := store.PoolCredentials(ctx, pool.ID)
	require.NoError(b, err)
	cfg, err := pgxpool.ParseConfig(cluster.DSN(pool.Name))
	require.NoError(b, err)
	cfg.ConnConfig.User, cfg.ConnConfig.Password = role, password
	cfg.MaxConns = benchConcurrency
	direct, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(b, err)
	b.Cleanup(direct.Close)
	e := httpapi.NewEngine(httpapi.Config{API: "tenant", Logger: logger})
	e.GET("/v1/users", func(c *gin.Context) {
		t := byHeader[c.GetHeader("Authorization")]
		c.Set(tenantKey, t)
		conn, err := direct.Acquire(c)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		defer conn.Release()
		if err := conn.Conn().PgConn().Exec(c, fmt.Sprintf(tenantSettingSQL, t.tenant.ID, 5000)).Close(); err != nil {
			httpapi.WriteError(c, err)
			return
		}
		// Committed before the answer is written, as the router does: a
		// pooled server that answers first could acknowledge a write that
		// does not commit.
		h := &held{conn: conn, tx: true, tenantID: t.tenant.ID}
		h.writer = &txWriter{ResponseWriter: c.Writer, h: h, logger: r}
		c.Writer = h.writer
		c.Set(poolKey, h)
		c.Next()
		h.writer.settle()
	}, listUsers)

	require.NoError(b, r.Start(ctx))
	defer func() { _ = r.Stop(context.Background()) }()
	srv := httptest.NewServer(r.Handler())
	for _, k := range env.keys {
		require.Equal(b, http.StatusOK, get(srv.URL, k), "every key resolved before the measure")
	}
	srv.Close()

	var routed, dir2 loadResult
	for range benchRounds {
		dir2.add(env.load(e, nil))
		routed.add(env.load(r.Handler(), r))
	}
	rps, p50, p99, cpu := routed.figures()
	drps, dp50, dp99, dcpu := dir2.figures()
	b.Logf("pooled: routed %7.0f req/s vs direct %7.0f req/s: ratio %.3f | p50 %.2f ms p99 %.2f ms (direct %.2f / %.2f ms) | CPU/request %.0f µs (direct %.0f µs) | errors %d",
		rps, drps, rps/drps, ms(p50), ms(p99), ms(dp50), ms(dp99), us(cpu), us(dcpu), routed.errors+dir2.errors)
	b.ReportMetric(rps/drps, "pooled-ratio")
	b.ReportMetric(rps, "routed-req/s")
	b.ReportMetric(drps, "direct-req/s")
	b.ReportMetric(float64(routed.errors+dir2.errors), "errors")
}

// BenchmarkRouterPooledMemory resolves the keys of 10,000 pooled tenants of
// one pool database through the router (GET /v1/me, which needs no
// database) and reports the heap the router holds for them: its key cache
// and per-tenant limiters; the pool database's one pool is not among them.
//
//	go test -run '^$' -bench RouterPooledMemory -benchtime 1x -timeout 30m ./router
func BenchmarkRouterPooledMemory(b *testing.B) {
	const tenants = 10000
	ctx := context.Background()
	store, logger := benchCatalog(b, 20, "bench-pooled", catalog.IsolationPooled)
	srv := pgtest.NewServer(b)
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1})
	require.NoError(b, err)
	_, err = prov.RegisterServer(ctx, provisioner.ServerSpec{Name: "pg-1", DSN: srv.ManagedDSN(b, "postgres"), Capacity: 10}, "bench")
	require.NoError(b, err)
	_, err = prov.CreatePool(ctx, "pg-1", tenants, "bench")
	require.NoError(b, err)
	keys := make([]string, 0, tenants)
	for i := range tenants {
		t, _, err := prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: fmt.Sprintf("pooled-%05d", i), Plan: "bench-pooled"}, "bench")
		require.NoError(b, err)
		_, k, err := store.CreateAPIKey(ctx, t.ID, "bench")
		require.NoError(b, err)
		keys = append(keys, k)
	}
	watcher := catalog.NewWatcher(store, logger)
	require.NoError(b, watcher.Start(ctx))
	b.Cleanup(watcher.Stop)
	r, err := New(Config{Store: store, Watcher: watcher, Ready: func(context.Context) error { return nil }, Logger: logger, FlushInterval: time.Hour})
	require.NoError(b, err)
	require.NoError(b, r.Start(ctx))
	defer func() { _ = r.Stop(context.Background()) }()
	h := r.Handler()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for _, k := range keys {
		req := httptest.NewRequest("GET", "/v1/me", nil)
		req.Header.Set("Authorization", "Bearer "+k)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		require.Equal(b, http.StatusOK, w.Code, w.Body.String())
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.Logf("router heap for %d resolved pooled tenants: %.1f MiB (%.0f B each)", tenants, float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), float64(m1.HeapAlloc-m0.HeapAlloc)/tenants)
	b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), "router-heap-MiB")
	runtime.KeepAlive(r)
}

package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

const (
	benchTenants     = 1000
	benchConcurrency = 16
	benchDuration    = 3 * time.Second // one measurement; each figure is several, interleaved
	benchRounds      = 5
	zipfS            = 1.1
)

// BenchmarkRouter compares, side by side in one run on one machine, servers
// answering GET /v1/users (the same handler, the same query) under
// Zipf-distributed traffic over 1,000 tenants:
//
//	direct:  one fixed pool on one tenant's database, no routing (the baseline)
//	ideal:   each request on its tenant's pool, found in a prepared map: the
//	         same databases and connections as cached, without the routing
//	cached:  the router with every tenant's pool cached
//	churn:   the router with a pool cache smaller than the active set
//
// ideal is the most any router could reach on these databases, so
// cached/ideal is the cost of the routing itself, and ideal/direct the cost
// of spreading the load over 1,000 databases.
//
//	go test -run '^$' -bench Router -benchtime 1x -timeout 30m ./router
func BenchmarkRouter(b *testing.B) {
	env := setupBench(b)
	direct := env.directHandler(b)
	cached := env.routed(b, "cached", benchTenants, direct)
	// A cache of 750 of 1,000 tenants: under Zipf(1.1) traffic an LRU of that
	// size serves about 95 % of requests (a perfect cache would need 600).
	churn := env.routed(b, "churn", 750, direct)

	for _, r := range []*benchResult{cached, churn} {
		b.Logf("%-6s %7.0f req/s vs direct %7.0f req/s: ratio %.3f | p50 %6.2f ms p99 %6.2f ms (direct p50 %5.2f ms p99 %6.2f ms) | CPU/request %3.0f µs (direct %3.0f µs) | hit %5.1f%% | errors %d",
			r.name, r.rps, r.directRPS, r.rps/r.directRPS, ms(r.p50), ms(r.p99), ms(r.directP50), ms(r.directP99),
			us(r.cpu), us(r.directCPU), 100*r.hitRate, r.errors)
	}
	b.Logf("ideal  %7.0f req/s: ratio %.3f to direct; cached/ideal %.3f | p50 %6.2f ms p99 %6.2f ms | CPU/request %3.0f µs",
		cached.idealRPS, cached.idealRPS/cached.directRPS, cached.rps/cached.idealRPS, ms(cached.idealP50), ms(cached.idealP99), us(cached.idealCPU))
	b.Logf("one tenant: routed/direct %.3f (the routing alone, all traffic on one tenant's database)", cached.oneTenantRatio)
	b.Logf("databases alone (pgx, no HTTP): the 1,000 tenant pools / the one pool %.3f", cached.dbRatio)
	b.ReportMetric(cached.rps/cached.directRPS, "cached-ratio")
	b.ReportMetric(cached.idealRPS/cached.directRPS, "ideal-ratio")
	b.ReportMetric(cached.rps/cached.idealRPS, "cached/ideal")
	b.ReportMetric(cached.oneTenantRatio, "one-tenant-ratio")
	b.ReportMetric(cached.dbRatio, "db-only-ratio")
	b.ReportMetric(churn.rps/churn.directRPS, "churn-ratio")
	b.ReportMetric(100*churn.hitRate, "churn-hit-%")
	b.ReportMetric(ms(churn.missP50), "miss-p50-ms")
	b.ReportMetric(ms(churn.missP99), "miss-p99-ms")
	b.Logf("routing overhead on a hit, p99: %v without the key's scope, expiry and allowlist checks, %v with them", cached.hitOverheadP99, cached.hitChecksP99)
	b.ReportMetric(float64(cached.hitOverheadP99.Microseconds()), "hit-overhead-p99-µs")
	b.ReportMetric(float64(cached.hitChecksP99.Microseconds()), "hit-overhead-checks-p99-µs")
	b.ReportMetric(float64(max(cached.peakConns, churn.peakConns)), "peak-conns")
	b.ReportMetric(float64(env.budget), "budget")
	b.ReportMetric(cached.bytesPerPool/1024, "KiB/pool")
}

type benchEnv struct {
	oneKey bool // send every request with the first tenant's key
	// directPool is the direct server's pool; tenantPools the cached
	// router's, by tenant index (set by idealHandler).
	directPool  *pgxpool.Pool
	tenantPools []*pgxpool.Pool
	store       *catalog.Store
	watcher     *catalog.Watcher
	keys        []string
	tenants     []catalog.Tenant
	budget      int
	logger      *slog.Logger
}

type benchResult struct {
	name                 string
	rps, directRPS       float64
	idealRPS             float64
	p50, p99             time.Duration
	directP50, directP99 time.Duration
	idealP50, idealP99   time.Duration
	cpu, directCPU       time.Duration // machine CPU (all processes) per request
	idealCPU             time.Duration
	errors               int64
	hitRate              float64
	missP50, missP99     time.Duration
	hitOverheadP99       time.Duration
	hitChecksP99         time.Duration // the same with scope, expiry and allowlist checks on
	peakConns            int64
	bytesPerPool         float64
	oneTenantRatio       float64
	dbRatio              float64 // the pools over 1,000 databases vs the one pool, no HTTP
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// benchCatalog opens a catalog of the benchmark's own with a plan named
// plan, of the given isolation, whose rate limit is out of the way: the
// figure is the routing.
func benchCatalog(b *testing.B, maxConns int32, plan string, isolation catalog.Isolation) (*catalog.Store, *slog.Logger) {
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	key, _ := catalog.ParseKey(catalog.NewKey())
	cipher, _ := catalog.NewCipher(key)
	store, err := catalog.Open(ctx, pgtest.NewDB(b, catalogTemplate), cipher, catalog.StoreConfig{MaxConns: maxConns})
	require.NoError(b, err)
	b.Cleanup(store.Close)
	_, err = store.Pool().Exec(ctx, `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ($1, 16, 1000000, 1000000, $2)`, plan, isolation)
	require.NoError(b, err)
	return store, logger
}

func setupBench(b *testing.B) *benchEnv {
	ctx := context.Background()
	store, logger := benchCatalog(b, 40, "bench", catalog.IsolationDedicated)

	// The tenant server: a private cluster with room for a connection per tenant.
	const budget = 1300 // a connection per tenant, and room for the hot ones to hold several
	cluster := benchCluster(b, 1400)

	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1, Workers: 6})
	require.NoError(b, err)
	require.NoError(b, prov.Start(ctx))
	defer func() { _ = prov.Stop(ctx) }()
	_, err = prov.RegisterServer(ctx, provisioner.ServerSpec{Name: "bench", DSN: cluster.DSN("postgres"), Capacity: 2000, ConnBudget: budget}, "bench")
	require.NoError(b, err)
	start := time.Now()
	// One tenant more than the traffic uses: the direct baseline's. It must
	// not share a role with routed traffic, whose connections would count
	// against the same per-role CONNECTION LIMIT.
	for i := range benchTenants + 1 {
		_, _, err := prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: fmt.Sprintf("bench-%04d", i), Plan: "bench"}, "bench")
		require.NoError(b, err)
	}
	env := &benchEnv{store: store, budget: budget, logger: logger}
	for i := range benchTenants + 1 {
		t, err := prov.WaitSettled(ctx, fmt.Sprintf("bench-%04d", i))
		require.NoError(b, err)
		require.Equal(b, catalog.TenantActive, t.State, t.LastError)
		_, k, err := store.CreateAPIKey(ctx, t.ID, "bench")
		require.NoError(b, err)
		env.keys = append(env.keys, k)
		env.tenants = append(env.tenants, t)
	}
	b.Logf("%d tenants provisioned in %v", benchTenants, time.Since(start).Round(time.Second))
	env.watcher = catalog.NewWatcher(store, logger)
	require.NoError(b, env.watcher.Start(ctx))
	b.Cleanup(env.watcher.Stop)
	return env
}

// benchCluster starts a private cluster on disk, with fsync off (the
// benchmarks measure reads), for the benchmark's life.
func benchCluster(b *testing.B, maxConnections int) *pgcluster.Cluster {
	dir, err := os.MkdirTemp("/var/tmp", "tenantplane-router-bench-")
	require.NoError(b, err)
	require.NoError(b, os.Chmod(dir, 0o755))
	cluster, err := pgcluster.New(pgcluster.Config{Dir: filepath.Join(dir, "data"), Password: "bench", Settings: map[string]string{
		"max_connections": strconv.Itoa(maxConnections), "shared_buffers": "256MB", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
	}})
	require.NoError(b, err)
	require.NoError(b, cluster.Start(context.Background()))
	b.Cleanup(func() { _ = cluster.Stop(context.Background()); _ = os.RemoveAll(dir) })
	return cluster
}

// directHandler serves the same handler from one fixed pool on the extra
// tenant's database: the cost of everything but routing.
func (env *benchEnv) directHandler(b *testing.B) http.Handler {
	ctx := context.Background()
	serverDSN, err := env.store.ServerDSN(ctx, "bench")
	require.NoError(b, err)
	baseline := env.tenants[benchTenants]
	role, pw, err := env.store.TenantCredentials(ctx, baseline.ID)
	require.NoError(b, err)
	cfg, err := pgxpool.ParseConfig(serverDSN)
	require.NoError(b, err)
	cfg.ConnConfig.User, cfg.ConnConfig.Password, cfg.ConnConfig.Database = role, pw, baseline.Database
	cfg.MaxConns = benchConcurrency
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(b, err)
	b.Cleanup(pool.Close)
	env.directPool = pool
	tenant := &resolved{tenant: baseline}
	return env.unrouted(func(*gin.Context) (*pgxpool.Pool, *resolved) { return pool, tenant })
}

// idealHandler serves each request from its tenant's pool in r's cache,
// found by the request's Authorization header in a map made beforehand: the
// same databases and connections as the routed server, without resolving,
// limits, metering, the LRU or the budget.
func (env *benchEnv) idealHandler(r *Router) http.Handler {
	type entry struct {
		pool   *pgxpool.Pool
		tenant *resolved
	}
	byHeader := make(map[string]entry, benchTenants)
	env.tenantPools = make([]*pgxpool.Pool, benchTenants)
	r.pools.mu.Lock()
	for i, k := range env.keys[:benchTenants] {
		if tp, ok := r.pools.cache.Peek(env.tenants[i].ID); ok {
			byHeader["Bearer "+k], env.tenantPools[i] = entry{tp.pool, &resolved{tenant: env.tenants[i]}}, tp.pool
		}
	}
	r.pools.mu.Unlock()
	return env.unrouted(func(c *gin.Context) (*pgxpool.Pool, *resolved) {
		e := byHeader[c.GetHeader("Authorization")]
		return e.pool, e.tenant
	})
}

// unrouted is the tenant API's users list on a pool chosen by pick, with the
// same engine and middleware as the router's.
func (env *benchEnv) unrouted(pick func(*gin.Context) (*pgxpool.Pool, *resolved)) http.Handler {
	e := httpapi.NewEngine(httpapi.Config{API: "tenant", Logger: env.logger})
	e.GET("/v1/users", func(c *gin.Context) {
		pool, tenant := pick(c)
		c.Set(tenantKey, tenant)
		conn, err := pool.Acquire(c)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		defer conn.Release()
		c.Set(poolKey, &held{conn: conn})
		c.Next()
	}, listUsers)
	return e
}

// routed measures the router with a pool cache of cacheSize, in rounds that
// alternate with the direct baseline so that both see the same machine.
func (env *benchEnv) routed(b *testing.B, name string, cacheSize int, direct http.Handler) *benchResult {
	r, err := New(Config{Store: env.store, Watcher: env.watcher, Ready: func(context.Context) error { return nil }, Logger: env.logger,
		Pools: PoolConfig{CacheSize: cacheSize, MaxConnIdleTime: 10 * time.Minute}, FlushInterval: time.Second})
	require.NoError(b, err)
	require.NoError(b, r.Start(context.Background()))
	defer func() { _ = r.Stop(context.Background()) }()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if cacheSize >= benchTenants {
		// Every tenant's pool opened first: the figure is the hit path.
		srv := httptest.NewServer(r.Handler())
		for _, k := range env.keys[:benchTenants] {
			get(srv.URL, k)
		}
		srv.Close()
		runtime.GC()
		runtime.ReadMemStats(&after)
	} else {
		env.load(r.Handler(), r) // fill the cache with the hot set; not reported
	}

	res := &benchResult{name: name}
	var ideal http.Handler
	if cacheSize >= benchTenants {
		ideal = env.idealHandler(r)
	}
	var routed, dir, idl loadResult
	for range benchRounds {
		dir.add(env.load(direct, nil))
		if ideal != nil {
			idl.add(env.load(ideal, nil))
		}
		routed.add(env.load(r.Handler(), r))
	}
	res.errors = routed.errors + dir.errors + idl.errors
	res.rps, res.p50, res.p99, res.cpu = routed.figures()
	res.directRPS, res.directP50, res.directP99, res.directCPU = dir.figures()
	if ideal != nil {
		res.idealRPS, res.idealP50, res.idealP99, res.idealCPU = idl.figures()
	}
	res.hitRate = 1 - float64(routed.misses)/float64(routed.requests)
	r.pools.budgetMu.Lock()
	for _, bg := range r.pools.budgets {
		res.peakConns = max(res.peakConns, bg.peak.Load())
	}
	r.pools.budgetMu.Unlock()
	if cacheSize >= benchTenants {
		res.bytesPerPool = float64(after.HeapAlloc-before.HeapAlloc) / benchTenants
		res.hitOverheadP99, res.hitChecksP99 = env.hitOverhead(b, r)
		// The same pair with all traffic on one tenant: the routing alone,
		// without the cost of spreading requests over 1,000 databases.
		env.oneKey = true
		var one, dir int64
		for range benchRounds {
			dir += env.load(direct, nil).requests
			one += env.load(r.Handler(), r).requests
		}
		env.oneKey = false
		res.oneTenantRatio = float64(one) / float64(dir)
		// The databases alone: the same query and traffic straight on the
		// pools, without HTTP or routing.
		var dbDirect, dbSpread int64
		for range benchRounds {
			n, errs := env.dbLoad(func(uint64) (*pgxpool.Pool, string) { return env.directPool, env.tenants[benchTenants].ID })
			dbDirect, res.errors = dbDirect+n, res.errors+errs
			n, errs = env.dbLoad(func(k uint64) (*pgxpool.Pool, string) { return env.tenantPools[k], env.tenants[k].ID })
			dbSpread, res.errors = dbSpread+n, res.errors+errs
		}
		res.dbRatio = float64(dbSpread) / float64(dbDirect)
	} else {
		res.missP50, res.missP99 = env.missLatency(b, r)
	}
	return res
}

func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100]
}

func get(base, key string) int {
	req, _ := http.NewRequest("GET", base+"/v1/users", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

type loadResult struct {
	lat                      []time.Duration
	requests, errors, misses int64
	cpu                      time.Duration // busy time of the whole machine
	rounds                   int
}

func (l *loadResult) add(m loadResult) {
	l.lat = append(l.lat, m.lat...)
	l.requests, l.errors, l.misses = l.requests+m.requests, l.errors+m.errors, l.misses+m.misses
	l.cpu += m.cpu
	l.rounds++
}

// figures are requests per second, latency quantiles and machine CPU per request.
func (l *loadResult) figures() (rps float64, p50, p99, cpu time.Duration) {
	p50, p99 = quantiles(l.lat)
	return float64(l.requests) / (benchDuration.Seconds() * float64(l.rounds)), p50, p99, l.cpu / time.Duration(l.requests)
}

// machineBusy is the CPU time all processes have used since boot, from
// /proc/stat (Linux); zero elsewhere.
func machineBusy() time.Duration {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	var busy int64
	for i, f := range strings.Fields(line)[1:] {
		n, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 && i < 7 { // user, nice, system, irq, softirq: not idle, iowait, steal or guest
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// load runs the Zipf traffic against h for benchDuration.
func (env *benchEnv) load(h http.Handler, r *Router) loadResult {
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchConcurrency}}
	var opened0 float64
	if r != nil {
		opened0 = counterValue(r.pools.opened)
	}
	var requests, errors atomic.Int64
	busy := machineBusy()
	lat := make([][]time.Duration, benchConcurrency)
	deadline := time.Now().Add(benchDuration)
	var wg sync.WaitGroup
	for w := range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			zipf := rand.NewZipf(rand.New(rand.NewSource(time.Now().UnixNano()+int64(w))), zipfS, 1, benchTenants-1)
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest("GET", srv.URL+"/v1/users", nil)
				k := zipf.Uint64()
				if env.oneKey {
					k = 0
				}
				req.Header.Set("Authorization", "Bearer "+env.keys[k])
				start := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				lat[w] = append(lat[w], time.Since(start))
				requests.Add(1)
				if err != nil || resp.StatusCode != http.StatusOK {
					errors.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	client.CloseIdleConnections()
	res := loadResult{lat: slices.Concat(lat...), requests: requests.Load(), errors: errors.Load(), cpu: machineBusy() - busy}
	if r != nil {
		res.misses = int64(counterValue(r.pools.opened) - opened0)
	}
	return res
}

// dbLoad runs the users list query under the Zipf traffic for
// benchDuration straight on the pool pick gives for each request's tenant,
// and returns how many ran and how many failed.
func (env *benchEnv) dbLoad(pick func(tenant uint64) (*pgxpool.Pool, string)) (requests, failures int64) {
	var ok, failed atomic.Int64
	deadline := time.Now().Add(benchDuration)
	var wg sync.WaitGroup
	for w := range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			zipf := rand.NewZipf(rand.New(rand.NewSource(time.Now().UnixNano()+int64(w))), zipfS, 1, benchTenants-1)
			for time.Now().Before(deadline) {
				pool, tenantID := pick(zipf.Uint64())
				rows, err := pool.Query(context.Background(), listUsersSQL, time.Time{}, "00000000-0000-0000-0000-000000000000", 51, tenantID)
				if err == nil {
					rows.Close()
					err = rows.Err()
				}
				if err == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return ok.Load(), failed.Load()
}

// hitOverhead times the routing work of a request whose tenant is cached:
// resolving the key, finding the pool, taking a connection and giving it
// back; and, interleaved, the same with the enterprise checks on (an
// unexpired expiry, a scope, a three-network allowlist behind a trusted
// proxy), as authenticate makes them.
func (env *benchEnv) hitOverhead(b *testing.B, r *Router) (plain, checked time.Duration) {
	ctx := context.Background()
	req := httptest.NewRequest("GET", "/v1/users", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("X-Forwarded-For", "198.51.100.7, 192.0.2.10")
	// No request is in flight here: the load runs before and after.
	defer func(old Config) { r.cfg = old }(r.cfg)
	r.cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	r.cfg.TenantDomain = "api.example.com"
	checks := &resolved{scopes: scopesOf([]string{catalog.ScopeUsersRead}), expiresAt: time.Now().Add(time.Hour),
		allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.0/24")}}
	var d, dc []time.Duration
	for i := range 40000 {
		k := env.keys[(i/2)%50]
		on := i%2 == 1
		start := time.Now()
		e, err := r.resolver.resolve(ctx, k)
		require.NoError(b, err)
		if on {
			require.NoError(b, r.checkHost(ctx, e.tenant.Slug+".api.example.com", e))
			require.False(b, checks.expired(start))
			require.NoError(b, r.checkNetwork(req, checks))
			require.NoError(b, r.checkScope("GET", "/v1/users", checks))
		}
		tp, err := r.pools.acquire(ctx, e)
		require.NoError(b, err)
		conn, err := tp.pool.Acquire(ctx)
		require.NoError(b, err)
		conn.Release()
		r.pools.release(tp)
		if on {
			dc = append(dc, time.Since(start))
		} else {
			d = append(d, time.Since(start))
		}
	}
	slices.Sort(d)
	slices.Sort(dc)
	return d[len(d)*99/100], dc[len(dc)*99/100]
}

// missLatency times whole requests for tenants whose pool is not cached.
func (env *benchEnv) missLatency(b *testing.B, r *Router) (p50, p99 time.Duration) {
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	var d []time.Duration
	for i := 0; len(d) < 200 && i < benchTenants; i++ {
		r.pools.mu.Lock()
		cached := r.pools.cache.Contains(env.tenants[i].ID)
		r.pools.mu.Unlock()
		if cached {
			continue
		}
		start := time.Now()
		require.Equal(b, http.StatusOK, get(srv.URL, env.keys[i]))
		d = append(d, time.Since(start))
	}
	return quantiles(d)
}

func counterValue(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// BenchmarkMemoryPer10kTenants states what 10,000 tenants cost: the catalog
// rows they take (tenant, one API key, two audit events each, with indexes)
// and the router's heap once it has resolved a key of each.
//
//	go test -run '^$' -bench MemoryPer10kTenants -benchtime 1x ./router
func BenchmarkMemoryPer10kTenants(b *testing.B) {
	const tenants = 10_000
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	key, _ := catalog.ParseKey(catalog.NewKey())
	cipher, _ := catalog.NewCipher(key)
	store, err := catalog.Open(ctx, pgtest.NewDB(b, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(b, err)
	b.Cleanup(store.Close)
	srv, err := store.CreateServer(ctx, catalog.NewServer{Name: "bench", DSN: "postgres://u:p@127.0.0.1:5432/postgres", Capacity: 20_000, ConnBudget: 500, Actor: "bench"})
	require.NoError(b, err)
	// Rows as the provisioner leaves them: a role and database name, a sealed
	// 48-character password (76 bytes sealed), created and activated events.
	_, err = store.Pool().Exec(ctx, `
		INSERT INTO tenants (slug, name, plan, state, server_id, db_name, db_role, credentials_sealed, schema_version)
		SELECT 'tenant-' || g, 'Tenant ' || g, 'basic', 'active', $2, 't_' || md5(g::text), 't_' || md5(g::text),
		       substr(decode(repeat(md5(g::text), 5), 'hex'), 1, 76), 1
		FROM generate_series(1, $1) g`, tenants, srv.ID)
	require.NoError(b, err)
	_, err = store.Pool().Exec(ctx, `
		INSERT INTO audit_events (actor, action, tenant_id, from_state, to_state)
		SELECT 'admin', a, id, f, t FROM tenants,
		       (VALUES ('tenant.created', NULL, 'provisioning'), ('tenant.activated', 'provisioning', 'active')) v (a, f, t)`)
	require.NoError(b, err)
	ids, err := pgxCollectStrings(ctx, store, `SELECT id::text FROM tenants ORDER BY slug`)
	require.NoError(b, err)
	keys := make([]string, 0, tenants)
	for _, id := range ids {
		_, k, err := store.CreateAPIKey(ctx, id, "bench")
		require.NoError(b, err)
		keys = append(keys, k)
	}
	var catalogBytes int64
	require.NoError(b, store.Pool().QueryRow(ctx, `SELECT pg_total_relation_size('tenants') + pg_total_relation_size('api_keys')
		+ pg_total_relation_size('audit_events')`).Scan(&catalogBytes))

	watcher := catalog.NewWatcher(store, logger)
	r, err := New(Config{Store: store, Watcher: watcher, Ready: func(context.Context) error { return nil }, Logger: logger})
	require.NoError(b, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, k := range keys {
		_, err := r.resolver.resolve(ctx, k)
		require.NoError(b, err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
	runtime.KeepAlive(r)
	b.Logf("10,000 tenants: catalog %.1f MiB (tenants, keys, audit events, indexes); router heap after resolving a key of each %.1f MiB (%.0f bytes a tenant)",
		float64(catalogBytes)/(1<<20), heap/(1<<20), heap/tenants)
	b.ReportMetric(float64(catalogBytes)/(1<<20), "catalog-MiB/10k")
	b.ReportMetric(heap/(1<<20), "router-heap-MiB/10k")
}

func pgxCollectStrings(ctx context.Context, store *catalog.Store, sql string) ([]string, error) {
	rows, err := store.Pool().Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

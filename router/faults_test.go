package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

// faultBundle is a running Router over a catalog of its own, with tenants
// on servers that may sit behind a faulttest proxy.
type faultBundle struct {
	store   *catalog.Store
	router  *Router
	api     string
	prov    *provisioner.Provisioner
	servers map[string]*pgtest.Server
	logger  *slog.Logger
}

// setupFaults starts the catalog (through catalogProxy's wire when it is
// not nil), a provisioner and a Router with cfg on an httptest server.
func setupFaults(t testing.TB, catalogDSN string, cfg Config) *faultBundle {
	t.Helper()
	ctx := context.Background()
	key, _ := catalog.ParseKey(catalog.NewKey())
	cipher, _ := catalog.NewCipher(key)
	store, err := catalog.Open(ctx, catalogDSN, cipher, catalog.StoreConfig{ConnectTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1})
	require.NoError(t, err)
	require.NoError(t, prov.Start(ctx))
	t.Cleanup(func() { _ = prov.Stop(ctx) })
	watcher := catalog.NewWatcher(store, logger)
	require.NoError(t, watcher.Start(ctx))
	t.Cleanup(watcher.Stop)
	cfg.Store, cfg.Watcher, cfg.Ready, cfg.Logger = store, watcher, store.Ping, logger
	r, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, r.Stop(ctx))
	})
	return &faultBundle{store: store, router: r, api: srv.URL, prov: prov, servers: map[string]*pgtest.Server{}, logger: logger}
}

// addServer registers a server under name at dsn (its own or a proxy's).
func (b *faultBundle) addServer(t testing.TB, name, dsn string) {
	t.Helper()
	_, err := b.prov.RegisterServer(context.Background(), provisioner.ServerSpec{Name: name, DSN: dsn, ConnBudget: 20}, "test")
	require.NoError(t, err)
}

// tenant provisions an active tenant on a server and returns an API key of it.
func (b *faultBundle) tenant(t testing.TB, slug, server string) (catalog.Tenant, string) {
	t.Helper()
	ctx := context.Background()
	tn, _, err := b.prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: slug, Plan: "enterprise", Server: server}, "test")
	require.NoError(t, err)
	tn, err = b.prov.WaitSettled(ctx, tn.Slug)
	require.NoError(t, err)
	require.Equal(t, catalog.TenantActive, tn.State, tn.LastError)
	_, key, err := b.store.CreateAPIKey(ctx, tn.ID, "test")
	require.NoError(t, err)
	return tn, key
}

// get sends GET path with key and returns the status and how long it took.
func (b *faultBundle) get(path, key string) (int, time.Duration, error) {
	req, err := http.NewRequest(http.MethodGet, b.api+path, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, time.Since(start), err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// p99 is the 99th percentile of ds.
func p99(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}

// load sends n requests per key from one goroutine per key, at most 400 a
// second each, and returns every latency; a status other than 200 is an error.
func (b *faultBundle) load(keys []string, n int) ([]time.Duration, error) {
	var mu sync.Mutex
	var out []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() {
			for range n {
				status, d, err := b.get("/v1/users?limit=10", k)
				mu.Lock()
				if err == nil && status != http.StatusOK {
					err = fmt.Errorf("status %d", status)
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				out = append(out, d)
				mu.Unlock()
				time.Sleep(2500 * time.Microsecond) // under the plan's 500 requests a second
			}
		})
	}
	wg.Wait()
	return out, firstErr
}

// routerConns counts the router's connections on a server.
func routerConns(t testing.TB, srv *pgtest.Server) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantplane-router'`).Scan(&n))
	return n
}

// TestHungServerOnlyAffectsItsTenants: a tenant server that hangs (every
// byte on its wire stops, connections stay open) answers its tenants 503
// within two seconds, every time, while the tenants of another server keep
// their latency; when the wire flows again its tenants are served again with
// no one restarting anything; and nothing leaks: no goroutine once the
// router has stopped, no connection left on either server.
//
// It runs alone (no t.Parallel): the goroutine-leak check reads every
// goroutine of the process, and the latency comparison wants a quiet one.
func TestHungServerOnlyAffectsItsTenants(t *testing.T) {
	faulttest.VerifyNoLeaks(t) // first: its check runs after every other cleanup
	_ = faulttest.Seed(t)      // the schedule is fixed; the seed is printed for the record
	h := runHungServer(t, 150)
	bad := slices.DeleteFunc(slices.Clone(h.hungAnswers), func(s string) bool { return s == "" })
	require.Empty(t, bad, "each of the hung server's %d answers is a 503 within 2 s", len(h.hungAnswers))
	require.GreaterOrEqual(t, len(h.hungAnswers), 8)
	// p99 within 20 % of the runs without the fault (before and after it),
	// with 50 ms of slack: on a machine shared with other work a p99 of a
	// few ms moves by tens of ms from one second to the next, while a hung
	// server that held anything the other tenants need adds seconds (the
	// acquire or request timeout). BenchmarkHungServerOtherTenants measures
	// the ratio itself.
	t.Logf("other server's tenants: p99 %v without the fault, %v with it", h.base, h.faulted)
	require.LessOrEqual(t, h.faulted, h.base*12/10+50*time.Millisecond, "the other server's tenants slowed down")

	// No connection left behind once the router stops, on either server.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.LessOrEqual(t, routerConns(t, h.hungSrv), 20, "within the server's budget")
	require.NoError(t, h.b.router.Stop(ctx))
	require.Eventually(t, func() bool { return routerConns(t, h.hungSrv)+routerConns(t, h.okSrv) == 0 }, 5*time.Second, 50*time.Millisecond,
		"the router's connections are all closed")
}

// BenchmarkHungServerOtherTenants measures what a hung server costs the
// tenants of another: their p99 with the fault against without it (before
// and after), perKey requests from each of three tenants in each phase
// (TENANTPLANE_HUNG_PER_KEY, default 1000).
func BenchmarkHungServerOtherTenants(b *testing.B) {
	perKey := 1000
	if s := os.Getenv("TENANTPLANE_HUNG_PER_KEY"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(b, err)
		perKey = n
	}
	for b.Loop() {
		h := runHungServer(b, perKey)
		b.ReportMetric(float64(h.base.Microseconds()), "p99_µs_nofault")
		b.ReportMetric(float64(h.faulted.Microseconds()), "p99_µs_fault")
		b.ReportMetric(float64(h.faulted)/float64(h.base), "p99_ratio")
		b.ReportMetric(float64(h.maxHung.Milliseconds()), "hung_max_ms")
	}
}

// hungRun is what runHungServer saw.
type hungRun struct {
	b              *faultBundle
	hungSrv, okSrv *pgtest.Server
	hungAnswers    []string      // one per answer of the hung server's tenant: "" for a 503 within 2 s
	maxHung        time.Duration // the slowest of those answers
	base, faulted  time.Duration // p99 of the other server's tenants without and with the fault
}

// runHungServer serves tenants on two servers, one behind a proxy, and
// hangs that one's wire while both are asked: perKey requests from each of
// three tenants of the other server without the fault, with it, and after
// it; the hung server's tenant all along the fault. It checks that every
// phase's requests of the other server succeed, and that the hung server's
// tenant is served again once the wire flows.
func runHungServer(t testing.TB, perKey int) hungRun {
	t.Helper()
	h := hungRun{hungSrv: pgtest.NewServer(t), okSrv: pgtest.NewServer(t)}
	proxy := faulttest.NewProxy(t, "pg-hung", h.hungSrv.Addr())
	b := setupFaults(t, pgtest.NewDB(t, catalogTemplate), Config{})
	h.b = b
	b.addServer(t, "pg-hung", proxy.DSN(h.hungSrv.ManagedDSN(t, "postgres")))
	b.addServer(t, "pg-ok", h.okSrv.ManagedDSN(t, "postgres"))
	_, hungKey := b.tenant(t, "on-hung", "pg-hung")
	okKeys := make([]string, 3)
	for i := range okKeys {
		_, okKeys[i] = b.tenant(t, fmt.Sprintf("on-ok-%d", i), "pg-ok")
	}
	for _, k := range append([]string{hungKey}, okKeys...) {
		status, _, err := b.get("/v1/users", k)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status)
	}
	_, err := b.load(okKeys, 20) // warm
	require.NoError(t, err)
	baseline, err := b.load(okKeys, perKey)
	require.NoError(t, err)

	remove := proxy.Add(t, faulttest.Hang())
	// The hung server's tenant, from several clients at once, all along.
	stop := make(chan struct{})
	var hungMu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, d, err := b.get("/v1/users", hungKey)
				hungMu.Lock()
				h.maxHung = max(h.maxHung, d)
				if err != nil || status != http.StatusServiceUnavailable || d >= 2*time.Second {
					h.hungAnswers = append(h.hungAnswers, fmt.Sprintf("status %d after %v (%v)", status, d, err))
				} else {
					h.hungAnswers = append(h.hungAnswers, "")
				}
				hungMu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	time.Sleep(2500 * time.Millisecond) // the first requests find the hang, and the server is marked down
	faulted, err := b.load(okKeys, perKey)
	close(stop)
	wg.Wait()
	require.NoError(t, err, "another server's tenants were not served")

	remove()
	start := time.Now()
	require.Eventually(t, func() bool {
		status, _, err := b.get("/v1/users", hungKey)
		return err == nil && status == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond, "the hung server's tenant is served again once the wire flows")
	t.Logf("back in service %v after the fault was removed", time.Since(start))
	after, err := b.load(okKeys, perKey)
	require.NoError(t, err)
	h.base, h.faulted = p99(append(baseline, after...)), p99(faulted)
	return h
}

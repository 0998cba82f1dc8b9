package router

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// setupServer opens a catalog of the test's own, starts a provisioner on
// it and registers a private server (pg-1) with the given budget.
func setupServer(t *testing.T, connBudget int) (*catalog.Store, *provisioner.Provisioner, *pgtest.Server, *slog.Logger) {
	t.Helper()
	ctx := context.Background()
	key, _ := catalog.ParseKey(catalog.NewKey())
	cipher, _ := catalog.NewCipher(key)
	store, err := catalog.Open(ctx, pgtest.NewDB(t, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1})
	require.NoError(t, err)
	require.NoError(t, prov.Start(ctx))
	t.Cleanup(func() { _ = prov.Stop(ctx) })
	srv := pgtest.NewServer(t)
	_, err = prov.RegisterServer(ctx, provisioner.ServerSpec{Name: "pg-1", DSN: srv.ManagedDSN(t, "postgres"), ConnBudget: connBudget}, "test")
	require.NoError(t, err)
	return store, prov, srv, logger
}

// setupTenants provisions n tenants on a private server and returns the
// store and what the router would resolve them to.
func setupTenants(t *testing.T, n int) (*catalog.Store, []*resolved) {
	t.Helper()
	ctx := context.Background()
	store, prov, _, _ := setupServer(t, 20)
	var out []*resolved
	for i := range n {
		tn, _, err := prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: fmt.Sprintf("pool-%02d", i), Plan: "pro"}, "test")
		require.NoError(t, err)
		tn, err = prov.WaitSettled(ctx, tn.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tn.State, tn.LastError)
		out = append(out, &resolved{tenant: tn, plan: catalog.Plan{MaxConns: 2}, serverBudget: 20})
	}
	return store, out
}

func ping(tp *tenantPool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var one int
	return tp.pool.QueryRow(ctx, "SELECT 1").Scan(&one)
}

func TestEvictedPoolClosesAfterItsLastRequest(t *testing.T) {
	t.Parallel()
	store, tenants := setupTenants(t, 2)
	p := newPools(PoolConfig{CacheSize: 1}, store, slog.Default(), nil)
	ctx := context.Background()

	a, err := p.acquire(ctx, tenants[0])
	require.NoError(t, err)
	require.NoError(t, ping(a))
	b, err := p.acquire(ctx, tenants[1]) // evicts a, which is still in use
	require.NoError(t, err)
	require.NoError(t, ping(a), "a request holding an evicted pool keeps working")
	p.release(a)
	p.closing.Wait()
	require.ErrorContains(t, ping(a), "closed pool", "the evicted pool is closed once released")
	require.NoError(t, ping(b))
	p.release(b)
	p.purge()
	require.Equal(t, 2.0, testutil.ToFloat64(p.closed))
}

func TestEvictionRacingRequests(t *testing.T) {
	t.Parallel()
	store, tenants := setupTenants(t, 3)
	p := newPools(PoolConfig{CacheSize: 1}, store, slog.Default(), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				tp, err := p.acquire(context.Background(), tenants[(w+i)%3])
				if err != nil {
					errs <- err
					continue
				}
				if err := ping(tp); err != nil {
					errs <- err
				}
				p.release(tp)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err) // a "closed pool" here would mean a pool closed under a request
	}
	p.purge()
	require.Equal(t, testutil.ToFloat64(p.opened), testutil.ToFloat64(p.closed), "every pool opened was closed: none leaked")
}

func TestConcurrentMissesOpenOnePool(t *testing.T) {
	t.Parallel()
	store, tenants := setupTenants(t, 1)
	p := newPools(PoolConfig{CacheSize: 10}, store, slog.Default(), nil)
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tp, err := p.acquire(context.Background(), tenants[0])
			if err == nil {
				p.release(tp)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 1.0, testutil.ToFloat64(p.opened))
	p.purge()
}

// A spent connection budget first takes idle connections from other pools on
// the server, then waits BudgetWait, then refuses with the error that
// answers 503; the process never holds more than its replica's share.
func TestBudgetTakesIdleConnectionsThenWaitsThenRefuses(t *testing.T) {
	t.Parallel()
	store, tenants := setupTenants(t, 2)
	const budget, wait = 2, 300 * time.Millisecond // this replica's share
	for _, e := range tenants {
		e.serverBudget = 2*budget + 1 // conn_budget, shared by two replicas
	}
	p := newPools(PoolConfig{CacheSize: 10, BudgetWait: wait, Replicas: 2}, store, slog.Default(), nil)
	defer p.purge()
	ctx := context.Background()
	a, err := p.acquire(ctx, tenants[0])
	require.NoError(t, err)
	defer p.release(a)
	b, err := p.acquire(ctx, tenants[1])
	require.NoError(t, err)
	defer p.release(b)

	// a holds the whole budget.
	held := make([]*pgxpool.Conn, budget)
	release := func(i int) { held[i].Release(); held[i] = nil }
	defer func() { // before purge, which waits for connections in use
		for i := range held {
			if held[i] != nil {
				release(i)
			}
		}
	}()
	for i := range held {
		held[i], err = a.pool.Acquire(ctx)
		require.NoError(t, err)
	}
	start := time.Now()
	_, err = b.pool.Acquire(ctx)
	waited := time.Since(start)
	require.ErrorIs(t, err, errBudget)
	require.GreaterOrEqual(t, waited, wait, "it waited for the budget")
	require.Less(t, waited, wait+time.Second, "and no longer than BudgetWait")
	refusal := unavailable(tenants[1], err)
	require.Equal(t, catalog.CodeUnavailable, catalog.CodeOf(refusal))
	require.ErrorContains(t, refusal, "is at its connection budget; retry shortly")

	// One of a's connections goes idle: b takes its place at once. pgxpool
	// returns a connection to the idle set in the background when the pool
	// has an AfterRelease hook, as ours do: wait for it to be idle.
	release(1)
	require.Eventually(t, func() bool { return a.pool.Stat().IdleConns() == 1 }, 5*time.Second, time.Millisecond)
	start = time.Now()
	conn, err := b.pool.Acquire(ctx)
	require.NoError(t, err, "an idle connection of another pool was closed to make room")
	require.Less(t, time.Since(start), wait, "without waiting")
	require.Equal(t, int32(1), a.pool.Stat().TotalConns(), "a kept the connection in use")
	require.LessOrEqual(t, p.budget(tenants[0].tenant.ServerID, budget).peak.Load(), int64(budget))
	conn.Release()
}

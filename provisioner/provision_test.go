package provisioner

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
)

// TestCrashMidProvisioningIsFinishedAfterRestart stops a provisioner after
// each step of provisioning (role made; database made; grants and schema
// recorded) and shows a restarted one finishes every tenant once: each
// active, with one role and one database, the password it was first made
// with, and nothing else left on the server.
func TestCrashMidProvisioningIsFinishedAfterRestart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	steps := []string{"role", "database", "schema"}
	cfg := b.cfg
	cfg.WarmPoolSize = -1 // every tenant takes the template path, the longer one
	ids := stopMidProvisioning(t, b, cfg, steps)
	passwords := map[string]string{}
	for _, id := range ids {
		_, pw, err := b.store.TenantCredentials(ctx, id)
		require.NoError(t, err)
		passwords[id] = pw
	}

	// The restart finishes them.
	b.start(t, b.cfg)
	for _, step := range steps {
		tenant := waitState(t, b.store, "crash-after-"+step, catalog.TenantActive)
		_, pw, err := b.store.TenantCredentials(ctx, tenant.ID)
		require.NoError(t, err)
		require.Equal(t, passwords[tenant.ID], pw, "the role keeps the password it was made with")
		conn, err := pgx.Connect(ctx, withUser(b.server.DSN(tenant.Database), tenant.Role, pw))
		require.NoError(t, err, "the tenant's role logs in to its database")
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n))
		conn.Close(ctx)

		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tenant.ID, Action: "tenant.activated"})
		require.NoError(t, err)
		require.Len(t, events, 1, "activated once")
	}

	// Exactly the tenants' databases and roles exist; the reconciler agrees.
	dbs, roles := serverObjects(t, b)
	require.Len(t, dbs, len(steps))
	require.Len(t, roles, len(steps))
	orphans, err := b.start(t, b.cfg).Reconcile(ctx, false)
	require.NoError(t, err)
	require.Empty(t, orphans)
}

// stopMidProvisioning starts a provisioner on cfg whose job for tenant
// "crash-after-<step>" holds right after that step, creates one such tenant
// per step, waits until every job holds, and stops the process under them
// (its jobs in flight, as in a crash). It checks the tenants are left
// provisioning and returns their ids by step.
func stopMidProvisioning(t *testing.T, b *testBundle, cfg Config, steps []string) map[string]string {
	t.Helper()
	ctx := context.Background()
	reached := make(chan string, len(steps))
	cfg.afterStep = func(ctx context.Context, slug, step string) error {
		if slug == "crash-after-"+step {
			reached <- slug
			<-ctx.Done() // hold the job until the process stops under it
			return ctx.Err()
		}
		return nil
	}
	first, err := New(b.store, cfg)
	require.NoError(t, err)
	require.NoError(t, first.Start(ctx))
	ids := map[string]string{}
	for _, step := range steps {
		tenant, _, err := first.CreateTenant(ctx, TenantSpec{Slug: "crash-after-" + step, Plan: "basic"}, "test")
		require.NoError(t, err)
		ids[step] = tenant.ID
	}
	for range steps {
		select {
		case <-reached:
		case <-time.After(30 * time.Second):
			t.Fatal("the provisioning jobs did not reach their crash points")
		}
	}
	stopCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_ = first.Stop(stopCtx) // the process goes away with its jobs in flight
	for _, step := range steps {
		tenant, err := b.store.GetTenant(ctx, "crash-after-"+step)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantProvisioning, tenant.State, "not finished by the first process")
	}
	return ids
}

func TestReconcileReportsAndRemovesOrphans(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := b.start(t, b.cfg)
	ctx := context.Background()
	tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "kept", Plan: "basic"}, "test")
	require.NoError(t, err)
	waitState(t, b.store, "kept", catalog.TenantActive)

	// Leftovers that look like ours (made by the server's admin role, as a
	// crashed provisioning would), and a database that is not ours.
	stray := catalog.DatabaseName("00000000-0000-0000-0000-0000000000aa")
	admin, err := pgx.Connect(ctx, b.server.ManagedDSN(t, "postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	for _, s := range []string{"CREATE ROLE " + stray, "CREATE DATABASE " + stray, "CREATE DATABASE not_ours", "CREATE ROLE t_not_ours_either"} {
		_, err := admin.Exec(ctx, s)
		require.NoError(t, err, s)
	}

	orphans, err := p.Reconcile(ctx, false)
	require.NoError(t, err)
	require.Equal(t, []Orphan{
		{Server: "pg-1", Kind: "database", Name: stray, Why: "no live tenant in the catalog has this database"},
		{Server: "pg-1", Kind: "role", Name: stray, Why: "no live tenant in the catalog has this role"},
	}, orphans)

	orphans, err = p.Reconcile(ctx, true)
	require.NoError(t, err)
	require.Len(t, orphans, 2)
	require.True(t, orphans[0].Gone && orphans[1].Gone)
	dbs, roles := serverObjects(t, b)
	require.Equal(t, []string{tenant.Database}, dbs, "the tenant's database stays; the stray one is gone")
	require.Equal(t, []string{tenant.Role}, roles)
	var notOurs bool
	require.NoError(t, admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'not_ours')`).Scan(&notOurs))
	require.True(t, notOurs, "a database the provisioner did not name is never touched")
}

func TestConcurrentCreatesOfOneSlugMakeOneTenant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := b.start(t, b.cfg)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "racy", Plan: "basic"}, "test")
			if err == nil {
				ids[i] = tenant.ID
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		require.Equal(t, ids[0], id)
	}
	waitState(t, b.store, "racy", catalog.TenantActive)
	dbs, _ := serverObjects(t, b)
	require.Len(t, dbs, 1)
}

func waitState(t *testing.T, store *catalog.Store, slug string, want catalog.TenantState) catalog.Tenant {
	t.Helper()
	var tenant catalog.Tenant
	require.Eventually(t, func() bool {
		var err error
		tenant, err = store.GetTenant(context.Background(), slug)
		return err == nil && tenant.State == want
	}, 30*time.Second, 20*time.Millisecond, "tenant %s never became %s", slug, want)
	return tenant
}

// serverObjects lists the tenant databases and roles (t_...) on the test's server.
func serverObjects(t *testing.T, b *testBundle) (dbs, roles []string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.server.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	collect := func(sql string) []string {
		rows, err := conn.Query(ctx, sql)
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}
	return collect(`SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$' ORDER BY 1`),
		collect(`SELECT rolname FROM pg_roles WHERE rolname ~ '^t_[0-9a-f]{32}$' ORDER BY 1`)
}

func withUser(dsn, user, password string) string {
	cfg, _ := pgx.ParseConfig(dsn)
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, password, cfg.Host, cfg.Port, cfg.Database)
}

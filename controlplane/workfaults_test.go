package controlplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// TestWorkUnderCatalogFaults puts each network fault in turn (latency, a
// hang, resets, a slow bandwidth, a sliced stream; one a subtest) on the
// catalog's wire for three seconds (TENANTPLANE_CATALOG_FAULT_SECONDS) while a running tenantplane provisions
// new tenants, fans a new migration out to the older ones and sends a
// billing run to Stripe (stripe-mock, every request recorded). Nobody
// restarts or retries anything: once the fault is gone the process finishes
// the work by itself, and the end state is the one a run without the fault
// has: every tenant active and activated once, nothing orphaned, every
// tenant database at the newest version and none dirty (the migration fails
// if applied twice), no fan-out tenant failed, one invoice per tenant,
// created in Stripe under one idempotency key, every one finalized.
//
// It runs alone (its subtests in parallel): it checks that no goroutine is
// left running once the processes have stopped.
func TestWorkUnderCatalogFaults(t *testing.T) {
	pgtest.Shared(t)
	stripetest.Shared(t)
	faulttest.VerifyNoLeaks(t)
	seed := faulttest.Seed(t)
	for i, fault := range faulttest.Each() {
		t.Run(fault.Name, func(t *testing.T) {
			t.Parallel()
			r := rand.New(rand.NewPCG(seed, uint64(i)))
			workUnderCatalogFault(t, r, fault)
		})
	}
}

func workUnderCatalogFault(t *testing.T, r *rand.Rand, fault faulttest.Fault) {
	ctx := context.Background()
	catalogDSN := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, catalogDSN)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	k := &killRig{migDir: migrationsDir(t), catalog: pool, settleWithin: 20 * time.Second, tap: newStripeTap(t, stripetest.Shared(t).URL, catalogDSN)}
	env := map[string]string{
		"STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": k.tap.URL,
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_STORAGE_INTERVAL": "off", "TENANTPLANE_DUNNING_GRACE": "off",
		"TENANTPLANE_TENANT_MIGRATIONS": k.migDir, "TENANTPLANE_SECRET_KEY": catalog.NewKey(),
	}

	// Tenants at the schema of today, made by a first process without faults.
	first := setupFleetOn(t, catalogDSN, 1, env, 0)
	const older, newer = 4, 4
	for i := range older {
		status, body := call(t, "POST", first.admin+"/admin/v1/tenants?wait=true", testToken,
			map[string]any{"slug": fmt.Sprintf("old-%d", i), "name": "old", "plan": "basic"})
		require.Equal(t, http.StatusCreated, status, body)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	require.NoError(t, first.app.Stop(stopCtx))
	cancel()
	_, err = pool.Exec(ctx, `UPDATE tenants SET created_at = now() - interval '100 days'`) // billed for last month
	require.NoError(t, err)
	// A new migration for the fan-out, which fails if applied twice, and
	// takes a moment so the fault finds it under way.
	k.addMigration(t, 1000)
	require.NoError(t, os.WriteFile(filepath.Join(k.migDir, "001000_kill_1000.up.sql"),
		[]byte("SELECT pg_sleep(0.3);\nCREATE TABLE kill_1000 (id int);\n"), 0o644))

	// The process under test reaches the catalog through the proxy, and a
	// slower Stripe keeps the billing run (and the tenants' customers)
	// under way when the fault comes.
	k.tap.delay = 250 * time.Millisecond
	// The process under test reaches the catalog through the proxy.
	proxy, proxied := faulttest.ProxyDSN(t, "catalog", catalogDSN)
	b := setupEnv(t, proxied, env)
	k.admin = b.admin
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("the catalog at the end:\n%s", k.unfinished(t))
		var warnings []string
		for _, line := range strings.Split(b.logs.String(), "\n") {
			if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
				warnings = append(warnings, line)
			}
		}
		t.Logf("the process's warnings:\n%s", strings.Join(warnings, "\n"))
	})
	for i := range newer {
		status, body := call(t, "POST", b.admin+"/admin/v1/tenants", testToken,
			map[string]any{"slug": fmt.Sprintf("new-%d", i), "name": "new", "plan": "basic"})
		require.Equal(t, http.StatusAccepted, status, body)
	}
	status, body := call(t, "POST", b.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 2})
	require.Equal(t, http.StatusCreated, status, body)
	last := catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))
	status, body = call(t, "POST", b.admin+"/admin/v1/billing/runs", testToken, map[string]any{"period": last})
	require.Equal(t, http.StatusAccepted, status, body)

	wait := time.Duration(r.IntN(300)) * time.Millisecond
	time.Sleep(wait)
	remove := proxy.Add(t, fault)
	t.Logf("%s: on %v after the work was asked for, with %s", fault.Name, wait, k.inFlight(t))
	time.Sleep(time.Duration(faulttest.EnvInt(t, "TENANTPLANE_CATALOG_FAULT_SECONDS", 3)) * time.Second)
	remove()

	start := time.Now()
	k.settle(t, 0)
	t.Logf("%s: the work settled %v after the fault was removed", fault.Name, time.Since(start).Round(time.Millisecond))
	require.EqualValues(t, older+newer, k.count(t, `SELECT count(*) FROM tenants`))
	k.check(t, 0, 0, "")
	require.EqualValues(t, older, k.count(t, `SELECT count(*) FROM invoices`), "one invoice per older tenant")
	// Each tenant's Stripe customer asked for under one idempotency key,
	// however often the catalog made its job try again.
	keys := map[string]map[string]bool{}
	for _, c := range k.tap.customerCreates() {
		if keys[c.TenantID] == nil {
			keys[c.TenantID] = map[string]bool{}
		}
		keys[c.TenantID][c.IdempotencyKey] = true
	}
	require.Len(t, keys, older+newer, "a customer for each tenant")
	for id, k := range keys {
		require.Len(t, k, 1, "tenant %s: one customer creation key", id)
	}
	status, body = call(t, "GET", b.admin+"/admin/v1/migrations/status", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 1000, body["newest_version"], "every tenant at the new version")
	if strings.Contains(b.logs.String(), "panic") {
		t.Errorf("the process logged a panic:\n%s", b.logs.String())
	}
}

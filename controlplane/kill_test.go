package controlplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// killRig is what TestRandomKills runs the helper with.
type killRig struct {
	env     []string
	migDir  string
	catalog *pgxpool.Pool
	tap     *stripeTap
	api     string
	admin   string
	proc    *helperproc.Process
	// settleWithin bounds settle; default 90 s.
	settleWithin time.Duration
}

// start starts tenantplane and waits until it serves.
func (k *killRig) start(t *testing.T) {
	t.Helper()
	lines := helperproc.NewLines(100)
	k.proc = helperproc.Start(t, lines, k.env...)
	k.api, k.admin = "", ""
	timeout := time.After(60 * time.Second)
	for k.api == "" || k.admin == "" {
		select {
		case line := <-lines.C():
			if v, ok := strings.CutPrefix(line, "api="); ok {
				k.api = "http://" + v
			}
			if v, ok := strings.CutPrefix(line, "admin="); ok {
				k.admin = "http://" + v
			}
		case <-k.proc.Exited():
			t.Fatalf("tenantplane exited: %v", k.proc.Err())
		case <-timeout:
			t.Fatal("tenantplane did not start within 60 s")
		}
	}
}

// addMigration adds tenant migration version v, which fails if applied
// twice; the next process started fans it out.
func (k *killRig) addMigration(t *testing.T, v int) {
	t.Helper()
	name := fmt.Sprintf("%06d_kill_%d", v, v)
	require.NoError(t, os.WriteFile(filepath.Join(k.migDir, name+".up.sql"),
		fmt.Appendf(nil, "CREATE TABLE kill_%d (id int);\n", v), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(k.migDir, name+".down.sql"),
		fmt.Appendf(nil, "DROP TABLE kill_%d;\n", v), 0o644))
}

func (k *killRig) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, k.catalog.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// settle waits until the work of every cycle is over: no tenant
// provisioning, no fan-out or billing run unfinished.
func (k *killRig) settle(t *testing.T, cycle int) {
	t.Helper()
	settled := func() bool {
		return k.count(t, `SELECT count(*) FROM tenants WHERE state = 'provisioning'`) == 0 &&
			k.count(t, `SELECT count(*) FROM migration_runs WHERE state IN ('running', 'paused', 'halted')`) == 0 &&
			k.count(t, `SELECT count(*) FROM billing_runs WHERE state IN ('pending', 'running')`) == 0
	}
	within := k.settleWithin
	if within == 0 {
		within = 90 * time.Second
	}
	deadline := time.Now().Add(within)
	for !settled() {
		if time.Now().After(deadline) {
			t.Fatalf("cycle %d: the work left is not finished after %v:\n%s", cycle, within, k.unfinished(t))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// inFlight says how much work is under way: tenants provisioning, fan-out
// tenants and invoices unfinished.
func (k *killRig) inFlight(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("%d tenants provisioning, %d fan-out tenants and %d invoices unfinished",
		k.count(t, `SELECT count(*) FROM tenants WHERE state = 'provisioning'`),
		k.count(t, `SELECT count(*) FROM migration_run_tenants WHERE state IN ('pending', 'running')`),
		k.count(t, `SELECT count(*) FROM invoices WHERE state <> 'finalized'`)+
			k.count(t, `SELECT count(*) FROM billing_runs WHERE state IN ('pending', 'running')`))
}

// unfinished says what in the catalog is not active, done or completed:
// tenants, runs, run tenants, River jobs, each with its last error.
func (k *killRig) unfinished(t *testing.T) string {
	t.Helper()
	var state string
	require.NoError(t, k.catalog.QueryRow(context.Background(), `SELECT concat_ws(E'\n',
		(SELECT string_agg(slug || ' ' || state || ' ' || last_error, '; ') FROM tenants WHERE state <> 'active'),
		(SELECT string_agg(id || ' ' || state || ' ' || reason, '; ') FROM migration_runs),
		(SELECT string_agg(run_id || ' ' || tenant_id || ' ' || state || ' ' || coalesce(error, '') || ' ' || note, '; ') FROM migration_run_tenants WHERE state <> 'done'),
		(SELECT string_agg(id || ' ' || state || ' ' || coalesce(last_error, ''), '; ') FROM billing_runs),
		(SELECT string_agg(kind || ' ' || state || ' ' || attempt || ' ' || coalesce(errors[array_length(errors, 1)]::text, ''), '; ') FROM river_job WHERE state NOT IN ('completed')))`).Scan(&state))
	return state
}

// check checks what a kill must never break (the usage count, when
// meteredID is not "").
func (k *killRig) check(t *testing.T, cycle int, served int64, meteredID string) {
	t.Helper()
	require.Zero(t, k.count(t, `SELECT count(*) FROM tenants WHERE state <> 'active'`), "cycle %d: every tenant is active", cycle)
	require.Zero(t, k.count(t, `SELECT count(*) FROM (SELECT tenant_id FROM audit_events WHERE action = 'tenant.activated' GROUP BY tenant_id HAVING count(*) > 1) x`),
		"cycle %d: each tenant activated once", cycle)
	status, body := call(t, "GET", k.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	for _, o := range body["orphans"].([]any) {
		// A template of the schema before this cycle's migration is the
		// reconciler's to report (an operator removes it), not a leftover.
		if o.(map[string]any)["why"] != "template of another tenant schema" {
			t.Errorf("cycle %d: orphaned: %v", cycle, o)
		}
	}
	status, body = call(t, "GET", k.admin+"/admin/v1/migrations/status", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Empty(t, body["dirty"], "cycle %d: no migration applied twice or half", cycle)
	require.Empty(t, body["behind"], "cycle %d: every tenant at the newest version", cycle)
	require.Empty(t, body["unreachable"], "cycle %d", cycle)
	require.Zero(t, k.count(t, `SELECT count(*) FROM migration_run_tenants WHERE state = 'failed'`), "cycle %d: no tenant failed a fan-out", cycle)
	require.Zero(t, k.count(t, `SELECT count(*) FROM migration_runs WHERE state IN ('halted', 'failed')`), "cycle %d: no fan-out halted or failed", cycle)
	require.Zero(t, k.count(t, `SELECT count(*) FROM billing_runs WHERE state = 'failed'`), "cycle %d: no billing run failed", cycle)
	// One invoice per tenant and period, each created in Stripe with one
	// idempotency key: a retry after a kill reuses it, never makes another.
	require.Zero(t, k.count(t, `SELECT count(*) FROM (SELECT 1 FROM invoices GROUP BY tenant_id, period HAVING count(*) > 1) x`), "cycle %d", cycle)
	keys := map[string]bool{}
	for _, c := range k.tap.callsTo(http.MethodPost, regexp.MustCompile(`^/v1/invoices$`)) {
		keys[c.IdempotencyKey] = true
	}
	require.EqualValues(t, k.count(t, `SELECT count(*) FROM invoices WHERE stripe_invoice_id IS NOT NULL`), len(keys),
		"cycle %d: one Stripe invoice creation (one idempotency key) per invoice sent", cycle)
	require.Zero(t, k.count(t, `SELECT count(*) FROM invoices WHERE state <> 'finalized'`), "cycle %d: every invoice finalized", cycle)
	if meteredID != "" {
		require.Equal(t, served, k.count(t, `SELECT coalesce(sum(quantity), 0) FROM usage_periods WHERE tenant_id = $1 AND meter = 'api_calls'`, meteredID),
			"cycle %d: each request counted once (none in the flush interval before a kill)", cycle)
	}
}

// TestRandomKills SIGKILLs the whole tenantplane process at seeded random
// moments while it provisions tenants, fans a new migration out to every
// tenant database and sends a billing run to Stripe (stripe-mock, every
// request recorded), and restarts it. After each cycle the restarted process
// has finished the work: every tenant active and activated once, nothing
// orphaned, every tenant database at the newest version and none dirty
// (each migration fails if applied twice), one invoice per tenant and
// period created in Stripe with one idempotency key, and the requests
// served before the kill counted once. TENANTPLANE_KILL_CYCLES sets the
// number of cycles (default 2; each waits out the 10 s after which a dead
// process's jobs are taken over).
func TestRandomKills(t *testing.T) {
	t.Parallel()
	seed := faulttest.Seed(t)
	r := rand.New(rand.NewPCG(seed, 0))
	cycles := faulttest.EnvInt(t, "TENANTPLANE_KILL_CYCLES", 2)
	catalogDSN := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), catalogDSN)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	k := &killRig{migDir: migrationsDir(t), catalog: pool, tap: newStripeTap(t, stripetest.Shared(t).URL, catalogDSN)}
	k.env = []string{appHelperEnv + "=1",
		"DATABASE_URL=" + catalogDSN, "TENANTPLANE_API_ADDR=127.0.0.1:0", "TENANTPLANE_ADMIN_ADDR=127.0.0.1:0",
		"TENANTPLANE_ADMIN_TOKEN=" + testToken, "TENANTPLANE_SECRET_KEY=" + catalog.NewKey(),
		"STRIPE_API_KEY=" + stripetest.Key, "STRIPE_API_BASE=" + k.tap.URL,
		"TENANTPLANE_BILLING_GRACE=off", "TENANTPLANE_STORAGE_INTERVAL=off", "TENANTPLANE_DUNNING_GRACE=off",
		"TENANTPLANE_USAGE_FLUSH_INTERVAL=100ms", "TENANTPLANE_TENANT_MIGRATIONS=" + k.migDir,
	}
	k.start(t)
	srv := pgtest.NewServer(t)
	status, body := call(t, "POST", k.admin+"/admin/v1/servers", testToken, map[string]any{"name": "pg-1", "dsn": srv.ManagedDSN(t, "postgres"), "capacity": 100})
	require.Equal(t, http.StatusCreated, status, body)
	status, metered := call(t, "POST", k.admin+"/admin/v1/tenants?wait=true", testToken, map[string]any{"slug": "metered", "name": "m", "plan": "pro"})
	require.Equal(t, http.StatusCreated, status, metered)
	_, keyBody := call(t, "POST", k.admin+"/admin/v1/tenants/metered/keys", testToken, nil)
	key := keyBody["key"].(string)
	var served int64
	last := catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))

	for cycle := range cycles {
		// A new tenant migration, for this cycle's fan-out: a process
		// loads its migrations at start, and a run belongs to the schema
		// it was started on (a process with another one never takes it).
		k.addMigration(t, 1000+cycle)
		k.proc.Kill(t)
		k.start(t)
		// Requests to meter, all flushed before the kill (a kill loses at
		// most one flush interval, by design).
		for range 20 + r.IntN(30) {
			status, _, err := try("GET", k.api+"/v1/me", key, "")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status)
			served++
		}
		time.Sleep(400 * time.Millisecond) // four flush intervals
		// Work for the kill to interrupt: tenants to provision, a migration
		// to fan out (this process loaded it at start), a billing run.
		_, err := pool.Exec(context.Background(), `UPDATE tenants SET created_at = now() - interval '100 days'`) // billed for last month
		require.NoError(t, err)
		for i := range 6 {
			status, body := call(t, "POST", k.admin+"/admin/v1/tenants", testToken,
				map[string]any{"slug": fmt.Sprintf("kill-%d-%d", cycle, i), "name": "k", "plan": "basic"})
			require.Equal(t, http.StatusAccepted, status, body)
		}
		status, body := call(t, "POST", k.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 1})
		require.Contains(t, []int{http.StatusAccepted, http.StatusCreated, http.StatusConflict}, status, body)
		status, body = call(t, "POST", k.admin+"/admin/v1/billing/runs", testToken, map[string]any{"period": last})
		require.Contains(t, []int{http.StatusAccepted, http.StatusConflict, http.StatusOK}, status, body)
		wait := time.Duration(r.IntN(500)) * time.Millisecond
		time.Sleep(wait)
		k.proc.Kill(t)
		t.Logf("cycle %d: killed %v after the work was asked for, with %s", cycle, wait, k.inFlight(t))

		k.start(t)
		k.settle(t, cycle)
		k.check(t, cycle, served, metered["id"].(string))
	}
	require.Positive(t, k.count(t, `SELECT count(*) FROM invoices`), "the billing runs invoiced the tenants")
}

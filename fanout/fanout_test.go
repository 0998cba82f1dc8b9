package fanout

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/migrations"
)

// fanoutBundle is a catalog of the test's own with two private tenant
// servers, pg-1 and pg-2, registered in it.
type fanoutBundle struct {
	dsn     string // the catalog
	key     string // the catalog's secret key
	store   *catalog.Store
	runs    *store // fan-out's tables, as the tests look at them
	servers map[string]*pgtest.Server
	logger  *slog.Logger
}

func setupFanout(t testing.TB) *fanoutBundle {
	t.Helper()
	ctx := context.Background()
	b := &fanoutBundle{
		dsn: pgtest.NewDB(t, catalogTemplate), key: catalog.NewKey(), servers: map[string]*pgtest.Server{},
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	b.store = b.openStore(t)
	b.runs = newStore(b.store)
	// Start both clusters at once: each takes a few hundred milliseconds.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range []string{"pg-1", "pg-2"} {
		wg.Go(func() {
			srv := pgtest.NewServer(t)
			mu.Lock()
			b.servers[name] = srv
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, name := range []string{"pg-1", "pg-2"} {
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: name, DSN: b.servers[name].ManagedDSN(t, "postgres"), Capacity: 2000, ConnBudget: 80})
		require.NoError(t, err)
	}
	return b
}

func (b *fanoutBundle) openStore(t testing.TB) *catalog.Store {
	t.Helper()
	store, err := openCatalog(context.Background(), b.dsn, b.key, catalog.StoreConfig{MaxConns: 40})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return store
}

// schemaDir writes the tenant migrations to a directory: the embedded
// versions and the given files. It is what TENANTPLANE_TENANT_MIGRATIONS names.
func schemaDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	embedded := migrations.Embedded().FS()
	entries, err := fs.ReadDir(embedded, ".")
	require.NoError(t, err)
	for _, e := range entries {
		body, err := fs.ReadFile(embedded, e.Name())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.Name()), body, 0o644))
	}
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
	return dir
}

func loadSchema(t testing.TB, dir string) *migrations.Source {
	t.Helper()
	src, err := migrations.Load(dir)
	require.NoError(t, err)
	return &src
}

// service returns a fan-out service (a process, as far as the catalog can
// tell) on the bundle's catalog with the given tenant schema, started unless
// told otherwise, and stopped when the test ends.
func (b *fanoutBundle) service(t testing.TB, schema *migrations.Source, start bool, adjust func(*Config)) *Service {
	t.Helper()
	cfg := Config{Logger: b.logger, Migrations: schema, Lease: 2 * time.Second}
	if adjust != nil {
		adjust(&cfg)
	}
	p, err := New(b.store, cfg)
	require.NoError(t, err)
	if start {
		require.NoError(t, p.Start(context.Background()))
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Stop(ctx)
	})
	return p
}

// seedTenants makes n active tenants at p's newest schema the quick way:
// catalog rows, then a database cloned from a template on each server that
// migrations.Migrate built (no role; migrations run as the server's admin),
// as the provisioner does. Names are prefix-000 ...
func seedTenants(t testing.TB, p *Service, prefix string, n int) []catalog.Tenant {
	t.Helper()
	ctx := context.Background()
	tenants := make([]catalog.Tenant, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			t, _, err := p.db.CreateTenant(gctx, catalog.NewTenant{Slug: fmt.Sprintf("%s-%03d", prefix, i), Name: "seeded", Plan: "basic", Actor: "test"}, nil)
			if err != nil {
				return err
			}
			tenants[i], err = makeTenantDatabase(gctx, p, t)
			return err
		})
	}
	require.NoError(t, g.Wait())
	return tenants
}

// templates serializes building the seeding templates of a test process.
var templates sync.Mutex

// makeTenantDatabase gives a provisioning tenant its database, cloned from
// its server's template at p's newest schema (built on first use), and
// activates it.
func makeTenantDatabase(ctx context.Context, p *Service, t catalog.Tenant) (catalog.Tenant, error) {
	admin, err := p.connConfig(ctx, t.Server, "postgres", "tenantplane-test")
	if err != nil {
		return t, err
	}
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return t, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tpl := "tp_test_tpl_" + p.schema.Hash()
	templates.Lock()
	var exists bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, tpl).Scan(&exists)
	if err == nil && !exists {
		if _, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{tpl}.Sanitize()); err == nil {
			cfg := admin.Copy()
			cfg.Database = tpl
			_, err = migrations.Migrate(ctx, cfg, p.schema, p.schema.Latest(), migrations.Limits{})
		}
	}
	templates.Unlock()
	if err != nil {
		return t, err
	}
	strategy := ""
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return t, err
	}
	if version >= 150000 {
		strategy = " STRATEGY FILE_COPY" // a file copy beats WAL-logging a small template
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{t.Database}.Sanitize()+" TEMPLATE "+pgx.Identifier{tpl}.Sanitize()+strategy); err != nil {
		return t, err
	}
	if err := p.db.SetTenantSchema(ctx, t.ID, int64(p.schema.Latest()), false); err != nil {
		return t, err
	}
	return p.db.TransitionTenant(ctx, catalog.Transition{TenantID: t.ID, From: []catalog.TenantState{catalog.TenantProvisioning},
		To: catalog.TenantActive, Actor: "test", Action: "tenant.activated"})
}

// tenantExec runs sql in a tenant's database as the server's superuser.
func (b *fanoutBundle) tenantExec(t testing.TB, tenant catalog.Tenant, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.servers[tenant.Server].DSN(tenant.Database))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	require.NoError(t, err, sql)
}

// tenantQuery reads one value from a tenant's database.
func tenantQuery[T any](t testing.TB, b *fanoutBundle, tenant catalog.Tenant, sql string) T {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.servers[tenant.Server].DSN(tenant.Database))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var v T
	require.NoError(t, conn.QueryRow(ctx, sql).Scan(&v), sql)
	return v
}

// schemaOf reads a tenant database's golang-migrate version and dirty flag.
func (b *fanoutBundle) schemaOf(t testing.TB, tenant catalog.Tenant) (int64, bool) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.servers[tenant.Server].DSN(tenant.Database))
	require.NoError(t, err)
	defer conn.Close(ctx)
	v, dirty, err := migrations.ReadVersion(ctx, conn)
	require.NoError(t, err)
	return v, dirty
}

// waitRun waits until the run is in one of the states and returns it.
func waitRun(t testing.TB, store *store, id int64, timeout time.Duration, states ...RunState) MigrationRun {
	t.Helper()
	var run MigrationRun
	deadline := time.Now().Add(timeout)
	for {
		var err error
		run, err = store.GetMigrationRun(context.Background(), id)
		require.NoError(t, err)
		for _, s := range states {
			if run.State == s {
				return run
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %d is %s (%+v) after %s; want %v", id, run.State, run.Counts, timeout, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }

// v2UniqueEmail is a migration that fails on a tenant whose users hold one
// email twice, in different case: Postgres refuses the unique index.
const v2UniqueEmail = "CREATE UNIQUE INDEX users_email_lower_idx ON users (lower(email));"

// TestFanoutHaltsOnFailuresThenResumes: a migration that fails on 3 tenants
// with max_failures 2 halts the run with Postgres's error for each, leaves
// none running and none dirty (each step is a transaction); once the data
// is fixed, resume finishes the run.
func TestFanoutHaltsOnFailuresThenResumes(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	dir := schemaDir(t, map[string]string{"000003_unique_email.up.sql": v2UniqueEmail, "000003_unique_email.down.sql": "DROP INDEX users_email_lower_idx;"})
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	tenants := seedTenants(t, v1, "halt", 20)
	// The last three (never canaries: those are the first of each server) hold a duplicate.
	bad := tenants[17:]
	for _, tn := range bad {
		b.tenantExec(t, tn, `INSERT INTO users (email) VALUES ('dup@example.com'), ('DUP@example.com')`)
	}

	p := b.service(t, loadSchema(t, dir), true, nil)
	run, err := p.StartRun(ctx, RunSpec{Concurrency: 4, PerServer: 2, MaxFailures: 2}, "test")
	require.NoError(t, err)
	require.EqualValues(t, 3, run.TargetVersion, "the default target is the newest version")
	require.Equal(t, 2, run.Canary, "one canary per server by default")
	require.Equal(t, 20, run.Counts.Total)

	run = waitRun(t, b.runs, run.ID, 30*time.Second, RunHalted)
	require.Contains(t, run.Reason, "3 tenants failed, more than max_failures (2)")
	// Running tenants finish, no new ones start: nothing stays running.
	run = waitRunSettled(t, b.runs, run.ID)
	require.Equal(t, RunHalted, run.State)
	require.Equal(t, 3, run.Counts.Failed)
	require.Equal(t, 17, run.Counts.Done+run.Counts.Pending)

	report, err := p.Report(ctx, run.ID)
	require.NoError(t, err)
	require.Len(t, report.Failed, 3)
	for _, f := range report.Failed {
		require.Contains(t, []string{bad[0].Slug, bad[1].Slug, bad[2].Slug}, f.Slug)
		require.Contains(t, f.Error, `migration 3: could not create unique index "users_email_lower_idx"`)
		// Row-level security on the table: Postgres names no key value in the error.
		require.Contains(t, f.Error, "Duplicate keys exist")
		require.Contains(t, f.Error, "[SQLSTATE 23505]")
		require.False(t, f.Dirty, "the failed step rolled back")
		require.EqualValues(t, 2, *f.Version)
	}
	for _, tn := range bad {
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 2, v)
		require.False(t, dirty, "a failed step leaves the database clean at its previous version")
	}

	// Fix the data; resume retries the failed tenants and finishes.
	for _, tn := range bad {
		b.tenantExec(t, tn, `DELETE FROM users WHERE email = 'DUP@example.com'`)
	}
	run, err = p.ChangeRun(ctx, run.ID, RunResume, "test")
	require.NoError(t, err)
	require.Equal(t, RunRunning, run.State)
	run = waitRun(t, b.runs, run.ID, 30*time.Second, RunDone)
	require.Equal(t, RunCounts{Total: 20, Done: 20}, run.Counts)
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 3, v, tn.Slug)
		require.False(t, dirty)
		got, err := b.store.GetTenant(ctx, tn.Slug)
		require.NoError(t, err)
		require.EqualValues(t, 3, got.SchemaVersion, "the catalog's copy follows")
	}
	rows, _, err := p.RunTenants(ctx, run.ID, "done", 0, "")
	require.NoError(t, err)
	for _, r := range rows {
		if r.Slug == bad[0].Slug {
			require.Equal(t, 2, r.Attempts)
			require.Contains(t, r.Note, "retried after: migration 3")
		}
	}
}

// waitRunSettled waits until no tenant of the run is running.
func waitRunSettled(t testing.TB, store *store, id int64) MigrationRun {
	t.Helper()
	var run MigrationRun
	require.Eventually(t, func() bool {
		var err error
		run, err = store.GetMigrationRun(context.Background(), id)
		require.NoError(t, err)
		return run.Counts.Running == 0
	}, 30*time.Second, 20*time.Millisecond)
	return run
}

// TestFanoutCanaryFailureStopsTheRun: the canary wave fails, and no other
// tenant is touched, whatever the concurrency and max_failures.
func TestFanoutCanaryFailureStopsTheRun(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	tenants := seedTenants(t, v1, "canary", 12)
	for _, tn := range tenants {
		b.tenantExec(t, tn, `INSERT INTO users (email) VALUES ('dup@example.com'), ('DUP@example.com')`)
	}
	p := b.service(t, loadSchema(t, schemaDir(t, map[string]string{"000003_unique_email.up.sql": v2UniqueEmail})), true, nil)
	run, err := p.StartRun(ctx, RunSpec{Concurrency: 12, MaxFailures: 5}, "test")
	require.NoError(t, err)
	run = waitRun(t, b.runs, run.ID, 30*time.Second, RunHalted)
	run = waitRunSettled(t, b.runs, run.ID)
	require.Contains(t, run.Reason, "canary tenant")
	require.Equal(t, 2, run.Canary)
	require.Equal(t, 10, run.Counts.Pending, "no tenant but the canaries was tried")
	require.LessOrEqual(t, run.Counts.Failed, 2)

	rows, _, err := p.RunTenants(ctx, run.ID, "", 0, "")
	require.NoError(t, err)
	touched := 0
	for _, r := range rows {
		if r.Canary {
			continue
		}
		require.Equal(t, RunTenantPending, r.State, r.Slug)
		require.Zero(t, r.Attempts, r.Slug)
		touched += r.Attempts
	}
	require.Zero(t, touched)
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 2, v)
		require.False(t, dirty)
	}

	// Cancelling marks the rest skipped; a new run may start.
	run, err = p.ChangeRun(ctx, run.ID, RunCancel, "test")
	require.NoError(t, err)
	require.Equal(t, RunCancelled, run.State)
	require.Equal(t, 10, run.Counts.Skipped)
	_, err = p.ChangeRun(ctx, run.ID, RunResume, "test")
	require.ErrorIs(t, err, catalog.ErrConflict)
}

// logMigration is a migration that leaves one row per application in every
// tenant database, slowly enough to be caught in the middle.
const logMigration = `CREATE TABLE fanout_log (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL DEFAULT now());
INSERT INTO fanout_log DEFAULT VALUES;
SELECT pg_sleep(0.15);`

// TestFanoutTwoProcessesMigrateEachTenantOnce: two processes work on one
// run at once; each tenant is migrated once, by one of them, within the
// limits; one of them stops gracefully midway and hands over at once.
func TestFanoutTwoProcessesMigrateEachTenantOnce(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	tenants := seedTenants(t, v1, "twice", 24)
	dir := schemaDir(t, map[string]string{"000003_log.up.sql": logMigration})
	// Three slots each, six in all: both processes must take part.
	few := func(c *Config) { c.Workers = 3 }
	p1 := b.service(t, loadSchema(t, dir), true, few)
	b2 := *b
	b2.store = b.openStore(t) // the second process has a catalog pool of its own
	b2.runs = newStore(b2.store)
	p2 := b2.service(t, loadSchema(t, dir), true, few)

	// Sample the running tenants per server while the run goes.
	stopSampling := make(chan struct{})
	var peakTotal, peakServer int
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(10 * time.Millisecond):
			}
			rows, err := b.runs.ListRunTenants(ctx, 1, []RunTenantState{RunTenantRunning}, 0)
			if err != nil {
				continue
			}
			perServer := map[string]int{}
			for _, r := range rows {
				perServer[r.Server]++
				peakServer = max(peakServer, perServer[r.Server])
			}
			peakTotal = max(peakTotal, len(rows))
		}
	})
	run, err := p2.StartRun(ctx, RunSpec{Concurrency: 6, PerServer: 2, Canary: ptr(0)}, "test")
	require.NoError(t, err)
	require.EqualValues(t, 1, run.ID)

	// Midway, the first process stops gracefully: it finishes its tenants
	// and hands its slots over at once, without waiting for the run.
	require.Eventually(t, func() bool {
		r, err := b.runs.GetMigrationRun(ctx, run.ID)
		return err == nil && r.Counts.Done >= 8
	}, 60*time.Second, 10*time.Millisecond)
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	began := time.Now()
	require.NoError(t, p1.Stop(stopCtx))
	require.Less(t, time.Since(began), 3*time.Second, "a stopping process does not wait for the run to end")

	run = waitRun(t, b.runs, run.ID, 60*time.Second, RunDone)
	close(stopSampling)
	sampling.Wait()
	require.Equal(t, 24, run.Counts.Done)
	require.LessOrEqual(t, peakTotal, 4, "per_server 2 on two servers")
	require.LessOrEqual(t, peakServer, 2)

	rows, _, err := p1.RunTenants(ctx, run.ID, "", 0, "")
	require.NoError(t, err)
	workers := map[string]int{}
	for _, r := range rows {
		require.Equal(t, 1, r.Attempts, r.Slug)
		process, _, _ := strings.Cut(r.Worker, "/") // the process, without the slot
		workers[process]++
	}
	require.Len(t, workers, 2, "both processes took part: %v", workers)
	for _, tn := range tenants {
		require.Equal(t, 1, tenantQuery[int](t, b, tn, `SELECT count(*) FROM fanout_log`), tn.Slug)
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 3, v)
		require.False(t, dirty)
	}
}

// TestFanoutPauseResumeAndNewTenantsJoin: a run down to version 2 while the
// newest is 3, paused; a tenant created meanwhile is made at 3 (the template
// is the newest) and joins the run once it is active, which takes it to 2.
func TestFanoutPauseResumeAndNewTenantsJoin(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	schema := loadSchema(t, schemaDir(t, map[string]string{
		"000003_nickname.up.sql":   "ALTER TABLE users ADD COLUMN nickname text; SELECT pg_sleep(0.05);",
		"000003_nickname.down.sql": "ALTER TABLE users DROP COLUMN nickname; SELECT pg_sleep(0.05);",
	}))
	p := b.service(t, schema, true, nil)
	tenants := seedTenants(t, p, "down", 8)

	bad, err := p.StartRun(ctx, RunSpec{TargetVersion: ptr[int64](7)}, "test")
	require.ErrorIs(t, err, catalog.ErrInvalid)
	require.Contains(t, err.Error(), "versions 1, 2, 3")
	require.Zero(t, bad.ID)
	_, err = p.StartRun(ctx, RunSpec{Tenants: []string{"down-000", "nobody-here"}}, "test")
	require.ErrorIs(t, err, catalog.ErrInvalid)
	require.Contains(t, err.Error(), `"nobody-here" does not exist`)

	run, err := p.StartRun(ctx, RunSpec{TargetVersion: ptr[int64](2), Concurrency: 1, Canary: ptr(0)}, "test")
	require.NoError(t, err)
	_, err = p.StartRun(ctx, RunSpec{}, "test")
	require.ErrorIs(t, err, catalog.ErrConflict, "one open run at a time")
	run, err = p.ChangeRun(ctx, run.ID, RunPause, "test")
	require.NoError(t, err)
	require.Equal(t, RunPaused, run.State)
	run = waitRunSettled(t, b.runs, run.ID)
	require.Positive(t, run.Counts.Pending, "paused before the end")
	pendingAtPause := run.Counts.Pending
	time.Sleep(300 * time.Millisecond)
	run, err = b.runs.GetMigrationRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, pendingAtPause, run.Counts.Pending, "nothing starts while paused")

	// A tenant created meanwhile: still provisioning when the run resumes,
	// the run waits for it (the target is not the newest version, which new
	// tenants are made at), then takes it in once it is active.
	late, _, err := b.store.CreateTenant(ctx, catalog.NewTenant{Slug: "late-comer", Name: "late", Plan: "basic", Actor: "test"}, nil)
	require.NoError(t, err)
	_, err = p.ChangeRun(ctx, run.ID, RunResume, "test")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		run, err = b.runs.GetMigrationRun(ctx, run.ID)
		require.NoError(t, err)
		return run.Counts.Pending == 0 && run.Counts.Running == 0
	}, 30*time.Second, 20*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	run, err = b.runs.GetMigrationRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, RunRunning, run.State, "the run waits for the tenant still provisioning")
	late, err = makeTenantDatabase(ctx, p, late)
	require.NoError(t, err)
	require.EqualValues(t, 3, late.SchemaVersion, "new tenants are made at the newest version")

	run = waitRun(t, b.runs, run.ID, 30*time.Second, RunDone)
	require.Equal(t, 9, run.Counts.Done, "the tenant made during the run joined it")
	for _, tn := range append(tenants, late) {
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 2, v, tn.Slug)
		require.False(t, dirty)
	}
	events, err := b.store.ListAudit(ctx, catalog.AuditFilter{Subject: fmt.Sprintf("run %d", run.ID)})
	require.NoError(t, err)
	var actions []string
	for _, e := range events {
		actions = append(actions, e.Action)
	}
	require.Equal(t, []string{"migration_run.created", "migration_run.paused", "migration_run.resumed", "migration_run.done"}, actions)
}

// helperEnv names the environment of the fan-out helper process.
const helperEnv = "TENANTPLANE_FANOUT_HELPER"

// fanoutHelperProcess is not a test: it is the process that
// TestFanoutKilledProcessResumes starts and kills. TestMain runs it instead
// of the tests when helperEnv is set. It runs a fan-out service on the catalog
// and tenant schema its environment names until it is killed.
func fanoutHelperProcess() error {
	ctx := context.Background()
	store, err := helperStore(ctx)
	if err != nil {
		return err
	}
	schema, err := migrations.Load(os.Getenv("SCHEMA_DIR"))
	if err != nil {
		return err
	}
	p, err := New(store, Config{
		Logger:     helperLogger(),
		Migrations: &schema, Lease: 2 * time.Second, Workers: 3,
	})
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	run, err := p.StartRun(ctx, RunSpec{Concurrency: 3, Canary: ptr(0)}, "helper")
	if err != nil {
		return err
	}
	fmt.Printf("run %d started\n", run.ID)
	select {} // until killed
}

// TestFanoutKilledProcessResumes: the process running a migration run is
// killed (SIGKILL) in the middle; another one, started afterwards, resumes
// the run by itself, and every tenant database holds the migration's row
// exactly once.
func TestFanoutKilledProcessResumes(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	tenants := seedTenants(t, v1, "killed", 24)
	dir := schemaDir(t, map[string]string{"000003_log.up.sql": logMigration})

	helper := helperproc.Start(t, nil, helperEnv+"=1", "CATALOG_DSN="+b.dsn, "SECRET_KEY="+b.key, "SCHEMA_DIR="+dir)

	// Kill it once some tenants are done and others are being migrated.
	var run MigrationRun
	require.Eventually(t, func() bool {
		runs, _, err := b.runs.ListMigrationRuns(ctx, 1, "")
		if err != nil || len(runs) == 0 {
			return false
		}
		run = runs[0]
		return run.Counts.Done >= 6 && run.Counts.Running > 0
	}, 60*time.Second, 5*time.Millisecond)
	helper.Kill(t)
	run, err := b.runs.GetMigrationRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, RunRunning, run.State)
	require.Positive(t, run.Counts.Running, "the killed process left tenants claimed")
	require.Positive(t, run.Counts.Pending)
	t.Logf("killed with %+v", run.Counts)

	// A new process on the same catalog picks the run up by itself.
	b.service(t, loadSchema(t, dir), true, nil)
	run = waitRun(t, b.runs, run.ID, 60*time.Second, RunDone)
	require.Equal(t, 24, run.Counts.Done)
	for _, tn := range tenants {
		require.Equal(t, 1, tenantQuery[int](t, b, tn, `SELECT count(*) FROM fanout_log`), "applied once: %s", tn.Slug)
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 3, v)
		require.False(t, dirty)
	}
	rows, err := b.runs.ListRunTenants(ctx, run.ID, nil, 0)
	require.NoError(t, err)
	takenOver := 0
	for _, r := range rows {
		if r.Attempts > 1 {
			takenOver++
			require.Contains(t, r.Note, "whose lease ran out")
		}
	}
	require.Positive(t, takenOver, "the tenants the killed process held were taken over")
}

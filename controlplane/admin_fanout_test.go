package controlplane

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// migrationsDir is a TENANTPLANE_TENANT_MIGRATIONS directory holding the
// embedded tenant schema (version 1), to which a test adds versions.
func migrationsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := migrations.Embedded().FS()
	entries, err := fs.ReadDir(src, ".")
	require.NoError(t, err)
	for _, e := range entries {
		body, err := fs.ReadFile(src, e.Name())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.Name()), body, 0o644))
	}
	return dir
}

// redeploy stops the fleet's App and starts another on the same catalog
// with the same environment: how new tenant migrations reach a running
// installation.
func (f *fleet) redeploy(t *testing.T, env map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, f.app.Stop(ctx))
	f.testBundle = setupEnv(t, f.app.cfg.DatabaseURL, env)
}

// createTenants creates n tenants concurrently and waits until they are all active.
func (f *fleet) createTenants(t *testing.T, prefix string, n int) []map[string]any {
	t.Helper()
	out := make([]map[string]any, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			status, body := f.createTenant(t, fmt.Sprintf("%s-%02d", prefix, i), true)
			if status != http.StatusCreated {
				t.Errorf("creating tenant %d: %d %v", i, status, body)
			}
			out[i] = body
		})
	}
	wg.Wait()
	require.False(t, t.Failed())
	return out
}

// waitRunState polls GET /migrations/runs/{id} until the run is in state.
func (f *fleet) waitRunState(t *testing.T, id any, state string) map[string]any {
	t.Helper()
	var body map[string]any
	require.Eventually(t, func() bool {
		var status int
		status, body = call(t, "GET", fmt.Sprintf("%s/admin/v1/migrations/runs/%v", f.admin, id), testToken, nil)
		require.Equal(t, http.StatusOK, status, body)
		counts := body["counts"].(map[string]any)
		return body["state"] == state && counts["running"] == float64(0)
	}, 60*time.Second, 50*time.Millisecond, "run %v never became %s: %v", id, state, body)
	return body
}

func (f *fleet) status(t *testing.T) map[string]any {
	t.Helper()
	status, body := call(t, "GET", f.admin+"/admin/v1/migrations/status", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	return body
}

func slugsOf(list any) []string {
	var out []string
	for _, x := range list.([]any) {
		out = append(out, x.(map[string]any)["slug"].(string))
	}
	return out
}

// TestFanoutSixtyTenants: 60 tenants on two servers, and a new migration
// given through TENANTPLANE_TENANT_MIGRATIONS; a run takes every tenant to
// the new version, and each database's schema_migrations says so, clean.
func TestFanoutSixtyTenants(t *testing.T) {
	t.Parallel()
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 2, env)
	tenants := f.createTenants(t, "sixty", 60)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_users_plan.up.sql"),
		[]byte("ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';\nCREATE INDEX users_plan_idx ON users (plan);\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_users_plan.down.sql"), []byte("ALTER TABLE users DROP COLUMN plan;\n"), 0o644))
	f.redeploy(t, env)

	before := f.status(t)
	require.EqualValues(t, 3, before["newest_version"])
	require.Equal(t, []any{map[string]any{"version": float64(2), "tenants": float64(60)}}, before["histogram"])
	require.Len(t, before["behind"], 60)

	status, run := call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 8, "per_server": 4})
	require.Equal(t, http.StatusCreated, status, run)
	require.EqualValues(t, 3, run["target_version"])
	require.EqualValues(t, 60, run["counts"].(map[string]any)["total"])
	require.EqualValues(t, 2, run["canary"])
	run = f.waitRunState(t, run["id"], "done")
	require.Equal(t, map[string]any{"total": float64(60), "pending": float64(0), "running": float64(0), "done": float64(60),
		"failed": float64(0), "skipped": float64(0)}, run["counts"])
	require.Empty(t, run["failed"])

	for _, tn := range tenants {
		srv := f.servers[tn["server"].(string)]
		db := tn["database"].(string)
		require.EqualValues(t, 3, query[int64](t, srv.DSN(db), `SELECT version FROM schema_migrations`), db)
		require.False(t, query[bool](t, srv.DSN(db), `SELECT dirty FROM schema_migrations`), db)
		require.Contains(t, query[string](t, srv.DSN(db), `SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'plan'`), "free")
	}
	after := f.status(t)
	require.Equal(t, []any{map[string]any{"version": float64(3), "tenants": float64(60)}}, after["histogram"])
	require.Empty(t, after["behind"])
	require.Empty(t, after["dirty"])
	require.Empty(t, after["catalog_disagrees"], "the run updates the catalog's copy")
	_, body := call(t, "GET", f.admin+"/admin/v1/tenants/sixty-00", testToken, nil)
	require.EqualValues(t, 3, body["schema_version"])
}

// concurrentIndex fails on a tenant whose users hold one email twice, and,
// run outside a transaction as CONCURRENTLY must be, leaves it dirty.
const concurrentIndex = NoTransactionMarker + `
CREATE UNIQUE INDEX CONCURRENTLY users_email_lower_idx ON users (lower(email));
`

// NoTransactionMarker is migrations.NoTransactionMarker, spelled out as an operator would.
const NoTransactionMarker = "-- tenantplane:no-transaction"

// TestFanoutDirtyTenantIsReportedNeverForced: a migration that fails mid-way
// outside a transaction leaves one tenant dirty. The run halts and reports
// it with its version and error, the status shows it, a resume does not
// force it; the operator repairs it and forces the version (audited), and a
// new run succeeds.
func TestFanoutDirtyTenantIsReportedNeverForced(t *testing.T) {
	t.Parallel()
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 2, env)
	f.createTenants(t, "dirty", 4)
	// Created last, so not a canary (the first of each server).
	status, victim := f.createTenant(t, "dirty-victim", true)
	require.Equal(t, http.StatusCreated, status, victim)
	slug := victim["slug"].(string)
	srv, db := f.servers[victim["server"].(string)], victim["database"].(string)
	execSQL(t, srv.DSN(db), `INSERT INTO users (email) VALUES ('dup@example.com'), ('DUP@example.com')`)
	// And the catalog is wrong about another one.
	execSQL(t, f.app.cfg.DatabaseURL, `UPDATE tenants SET schema_version = 5 WHERE slug = 'dirty-00'`)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_email_index.up.sql"), []byte(concurrentIndex), 0o644))
	f.redeploy(t, env)
	st := f.status(t)
	var run map[string]any
	require.Equal(t, []string{"dirty-00"}, slugsOf(st["catalog_disagrees"]))
	require.EqualValues(t, 5, st["catalog_disagrees"].([]any)[0].(map[string]any)["catalog_version"])

	status, run = call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, nil)
	require.Equal(t, http.StatusCreated, status, run)
	id := run["id"]
	run = f.waitRunState(t, id, "halted")
	require.Contains(t, run["reason"], "1 tenant failed, more than max_failures (0)")
	failed := run["failed"].([]any)
	require.Len(t, failed, 1)
	ft := failed[0].(map[string]any)
	require.Equal(t, slug, ft["slug"])
	require.Equal(t, true, ft["dirty"])
	require.EqualValues(t, 3, ft["version"])
	require.Contains(t, ft["error"], "could not create unique index")
	require.EqualValues(t, 4, run["counts"].(map[string]any)["done"])

	st = f.status(t)
	require.Equal(t, []string{slug}, slugsOf(st["dirty"]))
	require.Equal(t, []string{slug}, slugsOf(st["behind"]), "dirty at 3, but 3 is not applied")
	require.Empty(t, st["catalog_disagrees"], "the run copied what it found to the catalog")

	// Another run waits for this one; resuming it does not force anything.
	status, body := call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "is halted: resume it, or cancel it")
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/migrations/runs/%v/resume", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	run = f.waitRunState(t, id, "halted")
	ft = run["failed"].([]any)[0].(map[string]any)
	require.Contains(t, ft["error"], "schema is dirty at version 3")
	require.Contains(t, ft["error"], "/migrations/force")
	require.True(t, query[bool](t, srv.DSN(db), `SELECT dirty FROM schema_migrations`), "never forced silently")

	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/migrations/runs/%v/cancel", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "cancelled", body["state"])

	// Force: refused without a version, for a clean tenant, and for an unknown version.
	for _, tc := range []struct {
		slug string
		body any
		want int
	}{
		{slug, map[string]any{}, http.StatusBadRequest},
		{slug, map[string]any{"version": 9}, http.StatusBadRequest},
		{"dirty-00", map[string]any{"version": 2}, http.StatusConflict},
		{"nobody", map[string]any{"version": 1}, http.StatusNotFound},
	} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/"+tc.slug+"/migrations/force", testToken, tc.body)
		require.Equal(t, tc.want, status, "%v: %v", tc, body)
	}

	// The operator repairs the database (the failed CONCURRENTLY left an
	// invalid index behind), then forces the version it is really at.
	execSQL(t, srv.DSN(db), `DROP INDEX users_email_lower_idx; DELETE FROM users WHERE email = 'DUP@example.com'`)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/migrations/force", testToken, map[string]any{"version": 2, "reason": "dropped the duplicate"})
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 2, body["schema_version"])
	require.Equal(t, false, body["schema_dirty"])
	events, err := f.app.store.ListAudit(context.Background(), catalog.AuditFilter{Action: "tenant.schema_forced"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "admin", events[0].Actor)
	require.Equal(t, "dropped the duplicate", events[0].Reason)
	require.Equal(t, map[string]any{"from_version": float64(3), "from_dirty": true, "version": float64(2)}, events[0].Details)

	status, run = call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"tenants": []string{slug}})
	require.Equal(t, http.StatusCreated, status, run)
	run = f.waitRunState(t, run["id"], "done")
	require.EqualValues(t, 1, run["counts"].(map[string]any)["done"])
	st = f.status(t)
	require.Equal(t, []any{map[string]any{"version": float64(3), "tenants": float64(5)}}, st["histogram"])
	require.Empty(t, st["dirty"])
	require.Empty(t, st["behind"])
}

// TestFanoutAPIInput: bad input is a 400 and leaves nothing; unknown or
// malformed run ids are 404; a run over no tenants is done at once.
func TestFanoutAPIInput(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	for _, body := range []any{
		map[string]any{"target_version": 99},
		map[string]any{"target_version": -1},
		map[string]any{"concurrency": -2},
		map[string]any{"concurrency": 100000},
		map[string]any{"max_failures": -1},
		map[string]any{"canary": -1},
		map[string]any{"tenants": []string{"Not A Slug"}},
		map[string]any{"tenants": []string{"nobody-here"}},
		"not an object",
	} {
		status, resp := call(t, "POST", b.admin+"/admin/v1/migrations/runs", testToken, body)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", body, resp)
		require.Equal(t, "invalid", errorCode(t, resp))
	}
	status, body := call(t, "GET", b.admin+"/admin/v1/migrations/runs", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, body["runs"], "bad input left no run behind")

	for _, path := range []string{"/migrations/runs/42", "/migrations/runs/42/tenants"} {
		status, body = call(t, "GET", b.admin+"/admin/v1"+path, testToken, nil)
		require.Equal(t, http.StatusNotFound, status, body)
	}
	status, _ = call(t, "GET", b.admin+"/admin/v1/migrations/runs/x", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, "a run id that cannot exist is not found")
	status, _ = call(t, "POST", b.admin+"/admin/v1/migrations/runs/42/pause", testToken, nil)
	require.Equal(t, http.StatusNotFound, status)

	status, run := call(t, "POST", b.admin+"/admin/v1/migrations/runs", testToken, nil)
	require.Equal(t, http.StatusCreated, status, run)
	require.Equal(t, "done", run["state"], "no tenants: nothing to do")
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/migrations/runs/%v/pause", b.admin, run["id"]), testToken, nil)
	require.Equal(t, http.StatusConflict, status)
	require.Contains(t, body["error"].(map[string]any)["message"], "is done; pause needs it to be running")
	status, body = call(t, "GET", fmt.Sprintf("%s/admin/v1/migrations/runs/%v/tenants?state=bogus", b.admin, run["id"]), testToken, nil)
	require.Equal(t, http.StatusBadRequest, status, body)

	status, body = call(t, "GET", b.admin+"/admin/v1/migrations/status", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 0, body["tenants"])
	require.Empty(t, body["histogram"])
}

// execSQL runs sql on the database of dsn.
func execSQL(t *testing.T, dsn, sql string) {
	t.Helper()
	conn, err := connect(t, dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), sql)
	require.NoError(t, err, sql)
}

// TestFanoutRunAfterADeployOfOtherMigrations: a run is under way when the
// process is redeployed with one more tenant migration. The old process
// hands the run over after its current tenant, even when its slot was
// fetched only as it stopped (it used to work the whole run then, its stop
// waiting for it). The new process
// never works on the old run: GET /migrations/runs/{id} says why in
// warning, resuming it answers 409 naming both sets, a new run answers 409
// while the old one is open, and once it is cancelled the new set's run
// takes every tenant to its newest version, none dirty.
func TestFanoutRunAfterADeployOfOtherMigrations(t *testing.T) {
	t.Parallel()
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 1, env)
	tenants := f.createTenants(t, "deploy", 3)
	write := func(name, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
	write("000003_slow.up.sql", "SELECT pg_sleep(3);\nCREATE TABLE slow_step (id int);\n") // 9 s for the three, one at a time
	write("000003_slow.down.sql", "DROP TABLE slow_step;\n")
	f.redeploy(t, env)
	status, run := call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 1, "canary": 0})
	require.Equal(t, http.StatusCreated, status, run)
	id := run["id"]
	oldHash := run["schema_hash"].(string)

	write("000004_more.up.sql", "CREATE TABLE more_step (id int);\n")
	write("000004_more.down.sql", "DROP TABLE more_step;\n")
	f.redeploy(t, env)
	runURL := fmt.Sprintf("%s/admin/v1/migrations/runs/%v", f.admin, id)
	status, run = call(t, "GET", runURL, testToken, nil)
	require.Equal(t, http.StatusOK, status, run)
	require.Equal(t, "running", run["state"], "not the new process's to end yet: %v", run)
	require.Contains(t, run["warning"], "the run was made with other tenant migrations (schema "+oldHash+")")
	require.Contains(t, run["warning"], "versions 1, 2, 3, 4")
	status, body := call(t, "POST", runURL+"/resume", testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "resume it from a process that has its migrations, or cancel it and start a new run here")
	status, body = call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)

	status, body = call(t, "POST", runURL+"/cancel", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	status, run = call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 3})
	require.Equal(t, http.StatusCreated, status, run)
	require.NotEqual(t, oldHash, run["schema_hash"])
	f.waitRunState(t, run["id"], "done")
	for _, tn := range tenants {
		srv := f.servers[tn["server"].(string)]
		db := tn["database"].(string)
		require.EqualValues(t, 4, query[int64](t, srv.DSN(db), `SELECT version FROM schema_migrations`), db)
		require.False(t, query[bool](t, srv.DSN(db), `SELECT dirty FROM schema_migrations`), db)
	}
}

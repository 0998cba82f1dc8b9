package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// createPool makes a pool database on a server through the admin API.
func (f *fleet) createPool(t *testing.T, server string, capacity int) map[string]any {
	t.Helper()
	status, body := call(t, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": server, "capacity": capacity})
	require.Equal(t, http.StatusCreated, status, body)
	require.Equal(t, "active", body["state"], body)
	return body
}

// pooledWithKey creates a pooled tenant (plan free) and a key for it.
func (f *fleet) pooledWithKey(t *testing.T, slug string) (map[string]any, string) {
	t.Helper()
	status, tenant := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": slug, "name": "Tenant " + slug, "plan": "free"})
	require.Equal(t, http.StatusCreated, status, tenant)
	require.Equal(t, "active", tenant["state"], "a pooled tenant is active as it is created")
	status, key := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status, key)
	return tenant, key["key"].(string)
}

// TestPooledTenantsThroughTheAdminAPI: a pool database, pooled tenants made
// at once with no database of their own, served by the tenant API, and a
// clear refusal when no pool has room.
func TestPooledTenantsThroughTheAdminAPI(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	status, body := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "too-early", "name": "x", "plan": "free"})
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "no pool database")
	status, body = call(t, "GET", f.admin+"/admin/v1/tenants/too-early", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, "a refused creation leaves nothing: %v", body)

	pool := f.createPool(t, "pg-1", 2)
	status, body = call(t, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "nowhere", "capacity": 2})
	require.Equal(t, http.StatusNotFound, status, body)
	status, body = call(t, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-1", "capacity": -1})
	require.Equal(t, http.StatusBadRequest, status, body)

	a, keyA := f.pooledWithKey(t, "small-a")
	require.Equal(t, pool["name"], a["pool"])
	require.Equal(t, "", a["database"])
	require.Equal(t, "pg-1", a["server"])
	_, keyB := f.pooledWithKey(t, "small-b")
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "small-c", "name": "x", "plan": "free"})
	require.Equal(t, http.StatusConflict, status, "the pool is full: %v", body)

	for _, key := range []string{keyA, keyB} {
		status, body = call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": "same@example.com"})
		require.Equal(t, http.StatusCreated, status, body)
	}
	status, body = call(t, "GET", f.api+"/v1/users", keyA, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["users"], 1)

	status, body = call(t, "GET", fmt.Sprintf("%s/admin/v1/pools/%v", f.admin, pool["id"]), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 2, body["tenants"])
	status, body = call(t, "GET", f.admin+"/admin/v1/pools/nope", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)
}

// TestFanoutMigratesPoolAndDedicatedDatabases: a run takes pool databases
// (one target for all their tenants) and tenant databases to a new version
// together; every pooled and dedicated tenant's rows survive it, and the
// catalog's pooled tenants follow their pool's version.
func TestFanoutMigratesPoolAndDedicatedDatabases(t *testing.T) {
	t.Parallel()
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 2, env)
	pools := []map[string]any{f.createPool(t, "pg-1", 100), f.createPool(t, "pg-2", 100)}
	keys := map[string]string{}
	for i := range 6 {
		_, keys[fmt.Sprintf("pooled-%d", i)] = f.pooledWithKey(t, fmt.Sprintf("pooled-%d", i))
	}
	for i := range 2 {
		slug := fmt.Sprintf("dedicated-%d", i)
		_, keys[slug] = f.tenantWithKey(t, slug, "pro", "")
	}
	for slug, key := range keys {
		for j := range 3 {
			status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": fmt.Sprintf("u%d@example.com", j), "name": slug})
			require.Equal(t, http.StatusCreated, status, body)
		}
	}

	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_users_nickname.up.sql"),
		[]byte("ALTER TABLE users ADD COLUMN nickname text NOT NULL DEFAULT '';\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_users_nickname.down.sql"), []byte("ALTER TABLE users DROP COLUMN nickname;\n"), 0o644))
	f.redeploy(t, env)

	status, run := call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 4})
	require.Equal(t, http.StatusCreated, status, run)
	require.EqualValues(t, 4, run["counts"].(map[string]any)["total"], "two pool databases and two tenant databases")
	require.EqualValues(t, 2, run["canary"], "the first target of each server")
	run = f.waitRunState(t, run["id"], "done")
	require.EqualValues(t, 4, run["counts"].(map[string]any)["done"], run)

	for _, p := range pools {
		srv := f.servers[p["server"].(string)]
		db := p["name"].(string)
		require.EqualValues(t, 3, query[int64](t, srv.DSN(db), `SELECT version FROM schema_migrations`), db)
		status, body := call(t, "GET", fmt.Sprintf("%s/admin/v1/pools/%v", f.admin, p["id"]), testToken, nil)
		require.Equal(t, http.StatusOK, status)
		require.EqualValues(t, 3, body["schema_version"])
	}
	st := f.status(t)
	require.Equal(t, []any{map[string]any{"version": float64(3), "tenants": float64(4)}}, st["histogram"], "two pool databases and two tenant databases, read from themselves")
	require.Empty(t, st["behind"])
	require.Empty(t, st["catalog_disagrees"])
	for slug, key := range keys {
		status, body := call(t, "GET", f.api+"/v1/users", key, nil)
		require.Equal(t, http.StatusOK, status, body)
		users := body["users"].([]any)
		require.Len(t, users, 3, "%s: every row survived", slug)
		for _, u := range users {
			require.Equal(t, slug, u.(map[string]any)["name"])
		}
		status, body = call(t, "GET", f.admin+"/admin/v1/tenants/"+slug, testToken, nil)
		require.Equal(t, http.StatusOK, status)
		require.EqualValues(t, 3, body["schema_version"], slug)
	}
}

// writeUntil inserts numbered users through the tenant API until stop is
// closed, and returns the emails acknowledged (201, or 409 for a retry whose
// first try landed), the failures, and the longest gap between two acks. A
// 503 is retried, as a client does, and counted apart (unavailable): on a
// loaded machine a request can meet the fence before its router has seen
// the hold.
func writeUntil(api, key, prefix string, stop <-chan struct{}) (acked, failed, unavailable []string, maxGap time.Duration) {
	last := time.Now()
	for n := 0; n < 20000; {
		select {
		case <-stop:
			return acked, failed, unavailable, maxGap
		default:
		}
		email := fmt.Sprintf("%s-%05d@example.com", prefix, n)
		status, body, err := try("POST", api+"/v1/users", key, `{"email": "`+email+`"}`)
		switch {
		case err == nil && (status == http.StatusCreated || status == http.StatusConflict):
			acked = append(acked, email)
			maxGap = max(maxGap, time.Since(last))
			last = time.Now()
			n++
			time.Sleep(10 * time.Millisecond)
		case err == nil && status == http.StatusServiceUnavailable:
			unavailable = append(unavailable, fmt.Sprintf("%s: %s", email, body))
			time.Sleep(50 * time.Millisecond)
		default:
			failed = append(failed, fmt.Sprintf("%s: %d %v %s", email, status, err, body))
			time.Sleep(20 * time.Millisecond)
		}
	}
	return acked, failed, unavailable, maxGap
}

// moveUnderWrites writes to a tenant (key) without a pause while start
// starts a move, and until a little after the move is done: no request may
// fail but for a rare 503 to retry (the routers hold the tenant's requests
// while its fence is up). It returns the done move and the writes
// acknowledged (emails prefix-NNNNN).
func (f *fleet) moveUnderWrites(t *testing.T, key, prefix, what string, start func() map[string]any) (move map[string]any, acked []string) {
	t.Helper()
	stop := make(chan struct{})
	var failed, unavailable []string
	var gap time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		acked, failed, unavailable, gap = writeUntil(f.api, key, prefix, stop)
	}()
	time.Sleep(300 * time.Millisecond)
	move = start()
	func() {
		defer func() { close(stop); <-done }() // the writer stops, whatever happens
		move = f.waitMove(t, move["id"])
		time.Sleep(300 * time.Millisecond)
	}()
	require.Empty(t, failed, "%s: no request fails but for a 503 to retry", what)
	require.LessOrEqual(t, len(unavailable), 3, "%s: the routers hold the tenant's requests; a 503 is the rare one that met the fence first: %v", what, unavailable)
	if len(unavailable) > 0 {
		t.Logf("%s: retried after 503: %v", what, unavailable)
	}
	require.NotEmpty(t, acked)
	t.Logf("%s: %d inserts, longest gap %v, write pause %v ms, %v rows copied", what, len(acked), gap.Round(time.Millisecond), move["write_pause_ms"], move["rows_copied"])
	return move, acked
}

func (f *fleet) waitMove(t testing.TB, id any) map[string]any {
	t.Helper()
	var move map[string]any
	require.Eventually(t, func() bool {
		var status int
		status, move = call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, id), testToken, nil)
		require.Equal(t, http.StatusOK, status, move)
		return move["phase"] == "done" || move["phase"] == "aborted"
	}, 90*time.Second, 50*time.Millisecond, "the move never finished: %v", move)
	require.Equal(t, "done", move["phase"], move)
	return move
}

// setupLogicalFleet is setupFleet with servers that allow the online mode:
// wal_level = logical, and the managed role given REPLICATION.
func setupLogicalFleet(t testing.TB, n int, env map[string]string) *fleet {
	t.Helper()
	f := &fleet{testBundle: setupEnv(t, "", env), servers: map[string]*pgtest.Server{}}
	for i := 1; i <= n; i++ {
		srv := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
		dsn := srv.ManagedDSN(t, "postgres")
		conn, err := connect(t, srv.DSN("postgres"))
		require.NoError(t, err)
		_, err = conn.Exec(context.Background(), "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
		conn.Close(context.Background())
		require.NoError(t, err)
		name := fmt.Sprintf("pg-%d", i)
		status, body := call(t, "POST", f.admin+"/admin/v1/servers", testToken, map[string]any{"name": name, "dsn": dsn, "capacity": 100})
		require.Equal(t, http.StatusCreated, status, body)
		f.servers[name] = srv
	}
	return f
}

// TestPromoteAndDemoteUnderWrites: a pooled tenant written to without a
// pause is promoted to a database of its own on another server, then
// demoted back into the pool, in the copy mode (wal_level = replica) and in
// the online mode (logical). Each time every acknowledged write is on the
// new side exactly once and no request fails (the routers hold them while
// the fence is up); the side left behind loses the tenant's rows after the
// keep; the pool's other tenant is untouched throughout.
func TestPromoteAndDemoteUnderWrites(t *testing.T) {
	t.Parallel()
	inBothModes(t, 2, map[string]string{"TENANTPLANE_MOVE_KEEP": "2s"}, promoteAndDemote)
}

// inBothModes runs test in parallel subtests on a fleet of n servers where
// moves run in the copy mode (wal_level = replica) and on one where they
// run online (logical).
func inBothModes(t *testing.T, n int, env map[string]string, test func(t *testing.T, f *fleet, mode string)) {
	for _, mode := range []string{"copy", "online"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var f *fleet
			if mode == "copy" {
				f = setupFleet(t, n, env)
			} else {
				f = setupLogicalFleet(t, n, env)
			}
			test(t, f, mode)
		})
	}
}

func promoteAndDemote(t *testing.T, f *fleet, mode string) {
	_, err := f.app.store.Pool().Exec(context.Background(), `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('pooled-fast', 4, 1000, 1000, 'pooled')`)
	require.NoError(t, err)
	pool := f.createPool(t, "pg-1", 10)
	poolDSN := f.servers["pg-1"].DSN(pool["name"].(string))
	var keys []string
	var tenants []map[string]any
	for _, slug := range []string{"growing", "neighbour"} {
		status, tenant := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": slug, "name": slug, "plan": "pooled-fast"})
		require.Equal(t, http.StatusCreated, status, tenant)
		status, key := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, nil)
		require.Equal(t, http.StatusCreated, status, key)
		keys, tenants = append(keys, key["key"].(string)), append(tenants, tenant)
	}
	id := tenants[0]["id"].(string)
	for j := range 5 {
		status, body := call(t, "POST", f.api+"/v1/users", keys[1], map[string]any{"email": fmt.Sprintf("n%d@example.com", j)})
		require.Equal(t, http.StatusCreated, status, body)
	}
	countIn := func(dsn, email string) int64 {
		return query[int64](t, dsn, `SELECT count(*) FROM users WHERE tenant_id = $1 AND email = $2`, id, email)
	}

	var all []string
	for round, change := range []struct{ path, to string }{{"promote", "pg-2"}, {"demote", ""}} {
		body := map[string]any{}
		if change.to != "" {
			body["to"] = change.to
		}
		move, acked := f.moveUnderWrites(t, keys[0], fmt.Sprintf("r%d", round), change.path, func() map[string]any {
			status, move := call(t, "POST", f.admin+"/admin/v1/tenants/growing/"+change.path, testToken, body)
			require.Equal(t, http.StatusAccepted, status, move)
			return move
		})
		require.Equal(t, change.path, move["kind"])
		require.Equal(t, pool["name"], move["pool"])
		require.Equal(t, mode, move["mode"], move["mode_reason"])
		all = append(all, acked...)

		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/growing", testToken, nil)
		newSide, oldSide := poolDSN, f.servers["pg-2"].DSN(catalog.DatabaseName(id))
		if change.path == "promote" {
			require.Equal(t, "pg-2", tenant["server"])
			require.Equal(t, catalog.DatabaseName(id), tenant["database"])
			require.Nil(t, tenant["pool"])
			newSide, oldSide = oldSide, newSide
		} else {
			require.Equal(t, pool["name"], tenant["pool"])
			require.Equal(t, "", tenant["database"])
		}
		for _, email := range all {
			require.EqualValues(t, 1, countIn(newSide, email), "%s: %s on the new side once", change.path, email)
		}
		require.EqualValues(t, len(all), query[int64](t, newSide, `SELECT count(*) FROM users WHERE tenant_id = $1`, id), "and nothing else")
		// The tenant API serves every row from the new side.
		status, page := call(t, "GET", f.api+"/v1/users?limit=1000", keys[0], nil)
		require.Equal(t, http.StatusOK, status, page)
		require.Len(t, page["users"], len(all))

		// After the keep, the side left behind holds nothing of the tenant's.
		if change.path == "promote" {
			require.Eventually(t, func() bool {
				return query[int64](t, oldSide, `SELECT count(*) FROM users WHERE tenant_id = $1`, id) == 0 &&
					query[int64](t, oldSide, `SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenantplane_fence_%'`) == 0
			}, 30*time.Second, 100*time.Millisecond, "the promoted tenant's rows leave the pool after the keep")
		} else {
			require.Eventually(t, func() bool {
				db, role := dbAndRoleExist(t, f.servers["pg-2"], catalog.DatabaseName(id))
				return !db && !role
			}, 30*time.Second, 100*time.Millisecond, "the demoted tenant's database and role go after the keep")
		}
		status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/moves/%v/revert", f.admin, move["id"]), testToken, nil)
		require.Equal(t, http.StatusConflict, status, "after the keep the source is gone: %v", body)
	}
	// The neighbour in the pool was served throughout and kept its rows.
	status, page := call(t, "GET", f.api+"/v1/users", keys[1], nil)
	require.Equal(t, http.StatusOK, status, page)
	require.Len(t, page["users"], 5)
}

// TestPooledTenantLifecycle: suspend, resume, delete within the grace
// period and restore work for a pooled tenant as for a dedicated one, its
// credentials are not its own to rotate, and storage is sampled per pooled
// tenant from its rows alone.
func TestPooledTenantLifecycle(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	f.createPool(t, "pg-1", 10)
	_, keyA := f.pooledWithKey(t, "small-a")
	_, keyB := f.pooledWithKey(t, "small-b")
	for j := range 100 {
		status, body := call(t, "POST", f.api+"/v1/users", keyA, map[string]any{"email": fmt.Sprintf("u%d@example.com", j), "name": "a fairly long name to weigh something"})
		require.Equal(t, http.StatusCreated, status, body)
		if j%10 == 9 {
			time.Sleep(time.Second) // the free plan allows 10 calls a second
		}
	}
	status, body := call(t, "POST", f.api+"/v1/users", keyB, map[string]any{"email": "one@example.com"})
	require.Equal(t, http.StatusCreated, status, body)

	// Storage: each pooled tenant's rows, sampled apart.
	_, err := f.app.billing.CollectStorage(context.Background())
	require.NoError(t, err)
	storage := map[string]float64{}
	for _, slug := range []string{"small-a", "small-b"} {
		status, usage := call(t, "GET", f.admin+"/admin/v1/tenants/"+slug+"/usage", testToken, nil)
		require.Equal(t, http.StatusOK, status, usage)
		meters := usage["usage"].(map[string]any)
		storage[slug], _ = meters["storage_bytes"].(float64)
		require.Positive(t, storage[slug], "%s: %v", slug, usage)
	}
	require.Greater(t, storage["small-a"], 50*storage["small-b"], "100 rows weigh more than one: %v", storage)

	for _, step := range []struct {
		action string
		want   int
	}{{"suspend", http.StatusForbidden}, {"resume", http.StatusOK}} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/small-a/"+step.action, testToken, nil)
		require.Equal(t, http.StatusOK, status, body)
		require.Eventually(t, func() bool {
			status, _ := call(t, "GET", f.api+"/v1/users?limit=1", keyA, nil)
			return status == step.want
		}, 5*time.Second, 20*time.Millisecond, step.action)
	}
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/small-a/rotate-credentials", testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)

	status, body = call(t, "DELETE", f.admin+"/admin/v1/tenants/small-a", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/users?limit=1", keyA, nil)
		return status == http.StatusNotFound
	}, 5*time.Second, 20*time.Millisecond)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/small-a/restore", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Eventually(t, func() bool {
		status, page := call(t, "GET", f.api+"/v1/users?limit=1000", keyA, nil)
		return status == http.StatusOK && len(page["users"].([]any)) == 100
	}, 5*time.Second, 50*time.Millisecond, "restored with every row")
}

// TestEvacuationLeavesAServerWithPooledTenantsDraining: an evacuation moves
// tenant databases, not pool databases; a server whose pool still holds
// pooled tenants ends draining, never empty, whatever moved off it.
func TestEvacuationLeavesAServerWithPooledTenantsDraining(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	f.createPool(t, "pg-1", 10)
	f.pooledWithKey(t, "stays-pooled")
	f.tenantWithKey(t, "moves-off", "pro", "pg-1")
	status, e := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, map[string]any{"evacuate": true, "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, e)
	require.EqualValues(t, 1, e["total"], "the dedicated tenant only")
	e = f.waitEvacuation(t, e["id"], 60*time.Second, finished)
	require.Equal(t, "done", e["state"], e)
	states, _ := f.serverStates(t)
	require.Equal(t, "draining", states["pg-1"], "the pool database there still holds a tenant")
}

// TestPoolOnAServerThatIsDownFailsThenRetries: a pool database whose server
// is down is left failed with the reason (503), takes no tenant, and is made
// by a retry once the server is back.
func TestPoolOnAServerThatIsDownFailsThenRetries(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	f.servers["pg-1"].Stop(t)
	status, body := call(t, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-1", "capacity": 5})
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	status, pools := call(t, "GET", f.admin+"/admin/v1/pools", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	pool := pools["pools"].([]any)[0].(map[string]any)
	require.Equal(t, "failed", pool["state"])
	require.NotEmpty(t, pool["last_error"])
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "waits", "name": "w", "plan": "free"})
	require.Equal(t, http.StatusConflict, status, "a failed pool takes no tenant: %v", body)

	f.servers["pg-1"].Start(t)
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/pools/%v/retry", f.admin, pool["id"]), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "active", body["state"])
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/pools/%v/retry", f.admin, pool["id"]), testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	_, key := f.pooledWithKey(t, "waits")
	status, body = call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": "a@example.com"})
	require.Equal(t, http.StatusCreated, status, body)
}

// TestErasePooledTenantDeletesItsRowsOnly: erasing a pooled tenant deletes
// its rows from the pool database it shares, keeps no archive of them, and
// leaves its neighbour's rows; the erasure record names the rows.
func TestErasePooledTenantDeletesItsRowsOnly(t *testing.T) {
	t.Parallel()
	archives := dataDir(t, "archives")
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_ARCHIVE_DIR": archives})
	pool := f.createPool(t, "pg-1", 10)
	_, keyA := f.pooledWithKey(t, "gone")
	_, keyB := f.pooledWithKey(t, "stays")
	for _, key := range []string{keyA, keyA, keyA, keyB} {
		status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": fmt.Sprintf("u%d@example.com", time.Now().UnixNano())})
		require.Equal(t, http.StatusCreated, status, body)
	}

	status, erasure := call(t, "POST", f.admin+"/admin/v1/tenants/gone/erase", testToken, map[string]any{"confirm": "gone"})
	require.Equal(t, http.StatusOK, status, erasure)
	var rows []any
	for _, a := range erasure["removed"].([]any) {
		if a.(map[string]any)["kind"] == "rows" {
			rows = append(rows, a)
		}
	}
	require.Len(t, rows, 1, erasure)
	require.Equal(t, pool["name"], rows[0].(map[string]any)["name"], erasure)
	require.Contains(t, rows[0].(map[string]any)["note"], "3 rows", erasure)

	conn, err := connect(t, f.servers["pg-1"].DSN(pool["name"].(string)))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	counts := map[string]int{}
	r, err := conn.Query(context.Background(), `SELECT tenant_id::text, count(*) FROM users GROUP BY 1`)
	require.NoError(t, err)
	for r.Next() {
		var id string
		var n int
		require.NoError(t, r.Scan(&id, &n))
		counts[id] = n
	}
	require.NoError(t, r.Err())
	require.Len(t, counts, 1, "only the neighbour's rows are left: %v", counts)
	for _, n := range counts {
		require.Equal(t, 1, n)
	}
	entries, err := os.ReadDir(archives)
	require.NoError(t, err)
	require.Empty(t, entries, "an erasure keeps no archive")

	status, again := call(t, "POST", f.admin+"/admin/v1/tenants/gone/erase", testToken, map[string]any{"confirm": "gone"})
	require.Equal(t, http.StatusOK, status, again)
	require.Equal(t, true, again["already_erased"], again)
	status, page := call(t, "GET", f.api+"/v1/users", keyB, nil)
	require.Equal(t, http.StatusOK, status, page)
	require.Len(t, page["users"], 1)
}

package controlplane

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
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

package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRepoolUnderWrites: a pooled tenant written to without a pause moves
// to a pool database on another server (POST /tenants/{slug}/move {to}, a
// repool), in the copy mode (wal_level = replica) and online (logical).
// Every acknowledged write is in the target pool exactly once and the
// tenant API serves them all from there; no request fails (the routers
// hold them while the fence is up); its neighbour in the source pool is
// served throughout and keeps its rows; the tenant's rows leave the source
// pool after the keep, and then the repool cannot be reverted.
func TestRepoolUnderWrites(t *testing.T) {
	t.Parallel()
	inBothModes(t, 2, map[string]string{"TENANTPLANE_MOVE_KEEP": "2s"}, repoolUnderWrites)
}

func repoolUnderWrites(t *testing.T, f *fleet, mode string) {
	_, err := f.app.store.Pool().Exec(context.Background(), `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('pooled-fast', 4, 1000, 1000, 'pooled')`)
	require.NoError(t, err)
	source := f.createPool(t, "pg-1", 10)
	var keys []string
	var tenants []map[string]any
	for _, slug := range []string{"wanderer", "neighbour"} {
		status, tenant := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": slug, "name": slug, "plan": "pooled-fast"})
		require.Equal(t, http.StatusCreated, status, tenant)
		require.Equal(t, source["name"], tenant["pool"])
		status, key := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, nil)
		require.Equal(t, http.StatusCreated, status, key)
		keys, tenants = append(keys, key["key"].(string)), append(tenants, tenant)
	}
	target := f.createPool(t, "pg-2", 10)
	id, neighbour := tenants[0]["id"].(string), tenants[1]["id"].(string)
	for j := range 5 {
		status, body := call(t, "POST", f.api+"/v1/users", keys[1], map[string]any{"email": fmt.Sprintf("n%d@example.com", j)})
		require.Equal(t, http.StatusCreated, status, body)
	}
	sourceDSN := f.servers["pg-1"].DSN(source["name"].(string))
	targetDSN := f.servers["pg-2"].DSN(target["name"].(string))

	// Bad input starts nothing.
	for _, tc := range []struct {
		slug   string
		body   map[string]any
		status int
	}{
		{"wanderer", map[string]any{"pool": source["id"]}, http.StatusBadRequest}, // its own pool
		{"wanderer", map[string]any{"pool": 999999}, http.StatusNotFound},         // no such pool
		{"wanderer", map[string]any{"to": "pg-1"}, http.StatusConflict},           // no other pool on pg-1
		{"wanderer", map[string]any{"to": "pg-1", "pool": target["id"]}, 400},     // not on pg-1
		{"wanderer", map[string]any{"pool": target["id"], "mode": "fast"}, 400},   // no such mode
		{"nobody", map[string]any{"pool": target["id"]}, http.StatusNotFound},     // no such tenant
		{"neighbour", map[string]any{"pool": -1}, http.StatusBadRequest},          // no such id
		{"wanderer", map[string]any{"pool": target["id"], "unknown": 1}, 400},     // no such field
		{"wanderer", map[string]any{}, http.StatusBadRequest},                     // neither to nor pool
		{"wanderer", map[string]any{"to": "nowhere"}, http.StatusNotFound},        // no such server
		{"wanderer", map[string]any{"pool": "tp_pool_1"}, http.StatusBadRequest},  // an id is a number
	} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/"+tc.slug+"/move", testToken, tc.body)
		require.Equal(t, tc.status, status, "%v: %v", tc.body, body)
	}
	if mode == "copy" {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/wanderer/move", testToken, map[string]any{"to": "pg-2", "mode": "online"})
		require.Equal(t, http.StatusConflict, status, "the online mode cannot run here: %v", body)
		require.Contains(t, body["error"].(map[string]any)["message"], "wal_level", body)
	}
	status, page := call(t, "GET", f.admin+"/admin/v1/moves", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, page["moves"], "bad input starts no move")

	countIn := func(dsn, tenant string) int64 {
		return query[int64](t, dsn, `SELECT count(*) FROM users WHERE tenant_id = $1`, tenant)
	}
	move, acked := f.moveUnderWrites(t, keys[0], "r", "repool", func() map[string]any {
		status, move := call(t, "POST", f.admin+"/admin/v1/tenants/wanderer/move", testToken, map[string]any{"to": "pg-2"})
		require.Equal(t, http.StatusAccepted, status, move)
		require.Equal(t, "repool", move["kind"])
		require.Equal(t, source["name"], move["pool"])
		require.Equal(t, target["name"], move["to_pool"])
		require.Equal(t, "pg-1", move["from"])
		require.Equal(t, "pg-2", move["to"])
		require.Equal(t, mode, move["mode"], move["mode_reason"])
		// The neighbour is served while its pool mate moves.
		status, body := call(t, "GET", f.api+"/v1/users", keys[1], nil)
		require.Equal(t, http.StatusOK, status, body)
		require.Len(t, body["users"], 5)
		return move
	})

	_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/wanderer", testToken, nil)
	require.Equal(t, target["name"], tenant["pool"])
	require.Equal(t, "pg-2", tenant["server"])
	for _, email := range acked {
		require.EqualValues(t, 1, query[int64](t, targetDSN, `SELECT count(*) FROM users WHERE tenant_id = $1 AND email = $2`, id, email), "%s in the target pool once", email)
	}
	require.EqualValues(t, len(acked), countIn(targetDSN, id), "and nothing else")
	status, body := call(t, "GET", f.api+"/v1/users?limit=1000", keys[0], nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["users"], len(acked), "the tenant API serves every row from the target pool")

	// After the keep the source pool holds nothing of the tenant's, and no
	// fence; the neighbour's rows are where they were, and served.
	require.Eventually(t, func() bool {
		return countIn(sourceDSN, id) == 0 && query[int64](t, sourceDSN, `SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenantplane_fence_%'`) == 0
	}, 30*time.Second, 100*time.Millisecond, "the repooled tenant's rows leave the source pool after the keep")
	require.EqualValues(t, 5, countIn(sourceDSN, neighbour))
	require.Zero(t, countIn(targetDSN, neighbour))
	status, body = call(t, "GET", f.api+"/v1/users", keys[1], nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["users"], 5)

	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/moves/%v/revert", f.admin, move["id"]), testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "cannot be reverted", "the source pool's rows are gone after the keep: %v", body)
	_, pools := call(t, "GET", fmt.Sprintf("%s/admin/v1/pools/%v", f.admin, target["id"]), testToken, nil)
	require.EqualValues(t, 1, pools["tenants"])
}

// TestEvacuationMovesPooledTenants: a server holding tenants with databases
// of their own and pooled tenants in its pool database is refused (409,
// nothing started) while no other server has a pool database with room;
// once one has, its evacuation moves every tenant (the pooled ones by
// repool, within the evacuation's bounds) while one pooled tenant takes
// writes without a pause, and the server ends empty, its pool database
// retired, every tenant served from the other server, every acknowledged
// write there once. A retired pool takes no tenant, nor a revert; once the
// server and its pool are active again, the busy tenant's repool is
// reverted under writes, back into the pool it kept its rows in.
func TestEvacuationMovesPooledTenants(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	_, err := f.app.store.Pool().Exec(context.Background(), `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('pooled-fast', 4, 1000, 1000, 'pooled')`)
	require.NoError(t, err)
	source := f.createPool(t, "pg-1", 10)
	keys := map[string]string{}
	for i := range 3 {
		slug := fmt.Sprintf("pooled-%d", i)
		_, keys[slug] = f.pooledWithKey(t, slug)
	}
	status, busy := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "busy-pooled", "name": "busy", "plan": "pooled-fast"})
	require.Equal(t, http.StatusCreated, status, busy)
	status, key := call(t, "POST", f.admin+"/admin/v1/tenants/busy-pooled/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status, key)
	for i := range 2 {
		slug := fmt.Sprintf("dedicated-%d", i)
		_, keys[slug] = f.tenantWithKey(t, slug, "pro", "pg-1")
	}
	for slug, key := range keys {
		status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": slug + "@example.com"})
		require.Equal(t, http.StatusCreated, status, body)
	}

	f.setCapacity(t, "pg-2", 1)
	status, body := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, map[string]any{"evacuate": true, "mode": "copy"})
	require.Equal(t, http.StatusConflict, status, body)
	msg := body["error"].(map[string]any)["message"].(string)
	require.Contains(t, msg, "its 2 tenants with a database of their own need places on other active servers, which have room for 1")
	require.Contains(t, msg, "its 4 pooled tenants need places in pool databases on other active servers, which have room for 0")
	require.Contains(t, msg, "POST /admin/v1/pools")
	f.setCapacity(t, "pg-2", 100)
	status, body = call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, map[string]any{"evacuate": true, "mode": "copy"})
	require.Equal(t, http.StatusConflict, status, body)
	require.NotContains(t, body["error"].(map[string]any)["message"], "database of their own", "room for those now: %v", body)
	states, _ := f.serverStates(t)
	require.Equal(t, "active", states["pg-1"], "a refused evacuation starts nothing")
	_, page := call(t, "GET", f.admin+"/admin/v1/evacuations", testToken, nil)
	require.Empty(t, page["evacuations"])

	target := f.createPool(t, "pg-2", 10)
	var e map[string]any
	_, acked := f.moveUnderWrites(t, key["key"].(string), "busy", "evacuation", func() map[string]any {
		status, e = call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken,
			map[string]any{"evacuate": true, "mode": "copy", "concurrency": 3, "per_server": 2})
		require.Equal(t, http.StatusAccepted, status, e)
		require.EqualValues(t, 6, e["total"], "the dedicated tenants and the pooled ones")
		e = f.waitEvacuation(t, e["id"], 90*time.Second, finished)
		for _, r := range e["tenants"].([]any) {
			if r := r.(map[string]any); r["tenant"] == "busy-pooled" {
				return map[string]any{"id": r["move_id"]}
			}
		}
		return nil
	})
	require.Equal(t, "done", e["state"], e)
	require.EqualValues(t, 6, e["moved"], e)
	targetDSN := f.servers["pg-2"].DSN(target["name"].(string))
	require.EqualValues(t, len(acked), query[int64](t, targetDSN, `SELECT count(*) FROM users WHERE tenant_id = $1`, busy["id"]))
	require.EqualValues(t, len(acked), query[int64](t, targetDSN, `SELECT count(DISTINCT email) FROM users WHERE tenant_id = $1 AND email = ANY($2)`,
		busy["id"], acked), "every acknowledged write in the target pool once")
	for _, r := range e["tenants"].([]any) {
		r := r.(map[string]any)
		require.Equal(t, "pg-2", r["to"], r)
		if strings.Contains(r["tenant"].(string), "pooled") {
			require.Equal(t, target["name"], r["to_pool"], r)
		} else {
			require.Nil(t, r["to_pool"], r)
		}
	}

	states, tenants := f.serverStates(t)
	require.Equal(t, "empty", states["pg-1"], "no tenant is left on it")
	require.Zero(t, tenants["pg-1"])
	_, pool := call(t, "GET", fmt.Sprintf("%s/admin/v1/pools/%v", f.admin, source["id"]), testToken, nil)
	require.Equal(t, "retired", pool["state"], pool)
	require.EqualValues(t, 0, pool["tenants"])
	_, pool = call(t, "GET", fmt.Sprintf("%s/admin/v1/pools/%v", f.admin, target["id"]), testToken, nil)
	require.EqualValues(t, 4, pool["tenants"])
	for slug, key := range keys {
		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/"+slug, testToken, nil)
		require.Equal(t, "pg-2", tenant["server"], slug)
		status, body := call(t, "GET", f.api+"/v1/users", key, nil)
		require.Equal(t, http.StatusOK, status, body)
		users := body["users"].([]any)
		require.Len(t, users, 1, slug)
		require.Equal(t, slug+"@example.com", users[0].(map[string]any)["email"])
	}
	// A retired pool database takes no tenant, nor a revert; a retry (and
	// its server's activation) makes it active again.
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "newcomer", "name": "n", "plan": "free", "server": "pg-1"})
	require.Equal(t, http.StatusConflict, status, body)
	var busyMove any
	for _, r := range e["tenants"].([]any) {
		if r := r.(map[string]any); r["tenant"] == "busy-pooled" {
			busyMove = r["move_id"]
		}
	}
	revertPath := fmt.Sprintf("%s/admin/v1/moves/%v/revert", f.admin, busyMove)
	status, body = call(t, "POST", revertPath, testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "takes no tenants", body)
	status, body = call(t, "POST", f.admin+"/admin/v1/servers/pg-1/activate", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/pools/%v/retry", f.admin, source["id"]), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "active", body["state"])

	revert, more := f.moveUnderWrites(t, key["key"].(string), "back", "revert", func() map[string]any {
		status, revert := call(t, "POST", revertPath, testToken, nil)
		require.Equal(t, http.StatusAccepted, status, revert)
		require.Equal(t, "repool", revert["kind"])
		require.Equal(t, target["name"], revert["pool"])
		require.Equal(t, source["name"], revert["to_pool"])
		require.Equal(t, busyMove, revert["reverts"])
		return revert
	})
	require.Equal(t, "pg-1", revert["to"])
	_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/busy-pooled", testToken, nil)
	require.Equal(t, source["name"], tenant["pool"])
	_, original := call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, busyMove), testToken, nil)
	require.Equal(t, "reverted", original["phase"])
	all := append(acked, more...)
	sourceDSN := f.servers["pg-1"].DSN(source["name"].(string))
	require.EqualValues(t, len(all), query[int64](t, sourceDSN, `SELECT count(*) FROM users WHERE tenant_id = $1`, busy["id"]))
	require.EqualValues(t, len(all), query[int64](t, sourceDSN, `SELECT count(DISTINCT email) FROM users WHERE tenant_id = $1 AND email = ANY($2)`,
		busy["id"], all), "every acknowledged write, before and after, back in its pool once")
	status, body = call(t, "GET", f.api+"/v1/users?limit=1000", key["key"].(string), nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["users"], len(all))
}

package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// changePlan sends PATCH /admin/v1/tenants/{slug} with body.
func (f *fleet) changePlan(t testing.TB, slug string, body any) (int, map[string]any) {
	t.Helper()
	return call(t, "PATCH", f.admin+"/admin/v1/tenants/"+slug, testToken, body)
}

// rateOf is the requests per second the router applies to a key's tenant
// (GET /v1/me's limits); 0 while a slower plan's limit refuses the call.
func (f *fleet) rateOf(t testing.TB, key string) float64 {
	t.Helper()
	status, me := call(t, "GET", f.api+"/v1/me", key, nil)
	if status == http.StatusTooManyRequests {
		return 0
	}
	require.Equal(t, http.StatusOK, status, me)
	return me["limits"].(map[string]any)["requests_per_second"].(float64)
}

// planChanges counts the tenant's tenant.plan_changed audit events from
// one plan to another.
func (f *fleet) planChanges(t testing.TB, tenantID, from, to string) int64 {
	t.Helper()
	return query[int64](t, f.app.cfg.DatabaseURL, `SELECT count(*) FROM audit_events WHERE action = 'tenant.plan_changed'
		AND tenant_id = $1 AND details->>'from' = $2 AND details->>'to' = $3`, tenantID, from, to)
}

// TestChangePlanWithinTier: a plan of the tenant's tier applies at once,
// audited, and the router applies its rate limit within a second (with a
// margin for a loaded machine); bad input is refused naming what is wrong
// and leaves the tenant as it was; a tenant that is not active or
// suspended is refused.
func TestChangePlanWithinTier(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	// Slow enough that the test cannot outrun it, however loaded the machine.
	query[int](t, f.app.cfg.DatabaseURL, `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst) VALUES ('trickle', 1, 1, 3) RETURNING 1`)
	tenant, key := f.tenantWithKey(t, "shifting", "pro", "")
	id := tenant["id"].(string)
	require.EqualValues(t, 100, f.rateOf(t, key), "pro's rate")

	status, body := f.changePlan(t, "shifting", map[string]any{"plan": "trickle"})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "trickle", body["plan"])
	require.Equal(t, "shifting", body["slug"])
	require.Nil(t, body["move_id"], "no move within a tier")
	require.EqualValues(t, 1, f.planChanges(t, id, "pro", "trickle"))
	start := time.Now()
	require.Eventually(t, func() bool { return f.rateOf(t, key) == 1 }, 10*time.Second, 20*time.Millisecond,
		"the router applies the new plan's rate limit")
	t.Logf("the router applied the new plan after %v", time.Since(start).Round(time.Millisecond))
	var limited int
	for range 10 {
		status, _, err := try("GET", f.api+"/v1/me", key, "")
		require.NoError(t, err)
		if status == http.StatusTooManyRequests {
			limited++
		}
	}
	require.Positive(t, limited, "a burst over trickle's limit of 1/s (burst 3) is refused")

	// Bad input: 400, the tenant as it was.
	for _, bad := range []struct {
		body any
		says string
	}{
		{map[string]any{"plan": "platinum"}, "plans: basic, enterprise, free, pro, trickle"},
		{map[string]any{"plan": ""}, "plans: basic"},
		{map[string]any{"plan": "pro", "server": "pg-1"}, "server"},
		{map[string]any{"plan": 42}, "plan"},
		{nil, ""},
	} {
		status, body := f.changePlan(t, "shifting", bad.body)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", bad.body, body)
		require.Equal(t, "invalid", errorCode(t, body))
		require.Contains(t, body["error"].(map[string]any)["message"], bad.says)
	}
	status, body = f.changePlan(t, "nobody-here", map[string]any{"plan": "pro"})
	require.Equal(t, http.StatusNotFound, status, body)
	status, body = call(t, "GET", f.admin+"/admin/v1/tenants/shifting", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "trickle", body["plan"], "a refused change leaves the plan")
	require.EqualValues(t, 1, query[int64](t, f.app.cfg.DatabaseURL, `SELECT count(*) FROM audit_events WHERE action = 'tenant.plan_changed' AND tenant_id = $1`, id),
		"and records nothing")

	// Its own plan again changes nothing; back to pro lifts the limit.
	status, body = f.changePlan(t, "shifting", map[string]any{"plan": "trickle"})
	require.Equal(t, http.StatusOK, status, body)
	status, body = f.changePlan(t, "shifting", map[string]any{"plan": "pro"})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "pro", body["plan"])
	require.Eventually(t, func() bool { return f.rateOf(t, key) == 100 }, 10*time.Second, 20*time.Millisecond)
	require.EqualValues(t, 2, query[int64](t, f.app.cfg.DatabaseURL, `SELECT count(*) FROM audit_events WHERE action = 'tenant.plan_changed' AND tenant_id = $1`, id))

	// A deleting tenant: 409, plan kept.
	status, body = call(t, "DELETE", f.admin+"/admin/v1/tenants/shifting", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, body)
	f.planRefused(t, "shifting", "basic", "is deleting; changing its plan needs it to be active or suspended", "pro")
}

// planRefused: changing slug's plan to plan is a 409 that says says, and
// the tenant keeps plan kept, with no move.
func (f *fleet) planRefused(t testing.TB, slug, plan, says, kept string) {
	t.Helper()
	status, body := f.changePlan(t, slug, map[string]any{"plan": plan})
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], says)
	status, body = call(t, "GET", f.admin+"/admin/v1/tenants/"+slug, testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, kept, body["plan"])
	require.Nil(t, body["move_id"])
}

// fastPlans adds a pooled and a dedicated plan whose rate limits a writer
// that does not pause cannot reach.
func (f *fleet) fastPlans(t testing.TB) {
	t.Helper()
	_, err := f.app.store.Pool().Exec(context.Background(), `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation)
		VALUES ('pooled-fast', 4, 1000, 1000, 'pooled'), ('dedicated-fast', 4, 900, 900, 'dedicated')`)
	require.NoError(t, err)
}

// TestChangePlanAcrossTiersUnderWrites: a pooled tenant written to without
// a pause is given a dedicated plan (a promotion that carries it), and
// takes the plan at the switch, not before; the move is reverted under
// writes, which puts it back in its pool on its old plan; a dedicated
// tenant is given a pooled plan (a demotion), reverted too (back into the
// database it kept). Each time every acknowledged
// write is on the new side exactly once and the router applies the plan.
func TestChangePlanAcrossTiersUnderWrites(t *testing.T) {
	t.Parallel()
	inBothModes(t, 1, map[string]string{"TENANTPLANE_MOVE_KEEP": "1h"}, changePlanAcrossTiers)
}

func changePlanAcrossTiers(t *testing.T, f *fleet, mode string) {
	f.fastPlans(t)
	pool := f.createPool(t, "pg-1", 10)
	poolDSN := f.servers["pg-1"].DSN(pool["name"].(string))
	status, tenant := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "growing", "name": "growing", "plan": "pooled-fast"})
	require.Equal(t, http.StatusCreated, status, tenant)
	status, key := call(t, "POST", f.admin+"/admin/v1/tenants/growing/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status, key)
	growingKey, id := key["key"].(string), tenant["id"].(string)
	ownDSN := f.servers["pg-1"].DSN(catalog.DatabaseName(id))
	// exactlyOnce: every acknowledged write of the tenant's on that side
	// once, and nothing else; the tenant API serves them all.
	exactlyOnce := func(dsn, tenantID, key string, all []string) {
		t.Helper()
		for _, email := range all {
			require.EqualValues(t, 1, query[int64](t, dsn, `SELECT count(*) FROM users WHERE tenant_id = $1 AND email = $2`, tenantID, email), email)
		}
		require.EqualValues(t, len(all), query[int64](t, dsn, `SELECT count(*) FROM users WHERE tenant_id = $1`, tenantID))
		status, page := call(t, "GET", f.api+"/v1/users?limit=1000", key, nil)
		require.Equal(t, http.StatusOK, status, page)
		require.Len(t, page["users"], len(all))
	}

	// Pooled to a dedicated plan: a promotion carrying it.
	promotion, all := f.moveUnderWrites(t, growingKey, "up", "promotion", func() map[string]any {
		status, body := f.changePlan(t, "growing", map[string]any{"plan": "dedicated-fast"})
		require.Equal(t, http.StatusAccepted, status, body)
		move, tn := body["move"].(map[string]any), body["tenant"].(map[string]any)
		require.Equal(t, "promote", move["kind"])
		require.Equal(t, mode, move["mode"], move["mode_reason"])
		require.Equal(t, "dedicated-fast", move["plan"])
		require.Equal(t, "pooled-fast", move["from_plan"])
		require.Equal(t, "pooled-fast", tn["plan"], "the plan changes at the switch, not before")
		require.Equal(t, move["id"], tn["move_id"])
		return move
	})
	status, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/growing", testToken, nil)
	require.Equal(t, http.StatusOK, status, tenant)
	require.Equal(t, "dedicated-fast", tenant["plan"], tenant)
	require.Equal(t, catalog.DatabaseName(id), tenant["database"])
	require.Nil(t, tenant["pool"])
	exactlyOnce(ownDSN, id, growingKey, all)
	status, shown := call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, promotion["id"]), testToken, nil)
	require.Equal(t, http.StatusOK, status, shown)
	require.Equal(t, "dedicated-fast", shown["plan"])
	require.Equal(t, "pooled-fast", shown["from_plan"])
	require.EqualValues(t, 1, f.planChanges(t, id, "pooled-fast", "dedicated-fast"))
	require.Eventually(t, func() bool { return f.rateOf(t, growingKey) == 900 }, 10*time.Second, 20*time.Millisecond)

	// The revert: back into its pool, on its old plan.
	revertUnderWrites := func(key, prefix string, id any) (map[string]any, []string) {
		return f.moveUnderWrites(t, key, prefix, "revert of move "+fmt.Sprint(id), func() map[string]any {
			status, move := call(t, "POST", fmt.Sprintf("%s/admin/v1/moves/%v/revert", f.admin, id), testToken, nil)
			require.Equal(t, http.StatusAccepted, status, move)
			return move
		})
	}
	revert, more := revertUnderWrites(growingKey, "back", promotion["id"])
	all = append(all, more...)
	require.Equal(t, "demote", revert["kind"])
	require.Equal(t, mode, revert["mode"], revert["mode_reason"])
	require.Equal(t, pool["name"], revert["pool"])
	require.Equal(t, promotion["id"], revert["reverts"])
	require.Equal(t, "pooled-fast", revert["plan"])
	status, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/growing", testToken, nil)
	require.Equal(t, http.StatusOK, status, tenant)
	require.Equal(t, "pooled-fast", tenant["plan"], tenant)
	require.Equal(t, pool["name"], tenant["pool"])
	exactlyOnce(poolDSN, id, growingKey, all)
	require.Zero(t, query[int64](t, poolDSN, `SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenantplane_fence_%'`), "its rows in the pool are not fenced any more")
	_, shown = call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, promotion["id"]), testToken, nil)
	require.Equal(t, "reverted", shown["phase"])
	require.EqualValues(t, 1, f.planChanges(t, id, "dedicated-fast", "pooled-fast"))
	require.Eventually(t, func() bool { return f.rateOf(t, growingKey) == 1000 }, 10*time.Second, 20*time.Millisecond)

	// A dedicated tenant to a pooled plan: a demotion carrying it.
	big, bigKey := f.tenantWithKey(t, "shrinking", "dedicated-fast", "")
	bigID := big["id"].(string)
	demotion, written := f.moveUnderWrites(t, bigKey, "down", "demotion", func() map[string]any {
		status, body := f.changePlan(t, "shrinking", map[string]any{"plan": "pooled-fast"})
		require.Equal(t, http.StatusAccepted, status, body)
		require.Equal(t, "dedicated-fast", body["tenant"].(map[string]any)["plan"])
		return body["move"].(map[string]any)
	})
	require.Equal(t, "demote", demotion["kind"])
	require.Equal(t, mode, demotion["mode"], demotion["mode_reason"])
	require.Equal(t, "pooled-fast", demotion["plan"])
	require.Equal(t, "dedicated-fast", demotion["from_plan"])
	status, big = call(t, "GET", f.admin+"/admin/v1/tenants/shrinking", testToken, nil)
	require.Equal(t, http.StatusOK, status, big)
	require.Equal(t, "pooled-fast", big["plan"])
	require.Equal(t, pool["name"], big["pool"])
	exactlyOnce(poolDSN, bigID, bigKey, written)

	// Its revert: back into the database it kept, on its old plan.
	back, more := revertUnderWrites(bigKey, "up-again", demotion["id"])
	written = append(written, more...)
	require.Equal(t, "promote", back["kind"])
	require.Equal(t, mode, back["mode"], back["mode_reason"])
	require.Equal(t, "dedicated-fast", back["plan"])
	status, big = call(t, "GET", f.admin+"/admin/v1/tenants/shrinking", testToken, nil)
	require.Equal(t, http.StatusOK, status, big)
	require.Equal(t, "dedicated-fast", big["plan"])
	require.Nil(t, big["pool"])
	exactlyOnce(f.servers["pg-1"].DSN(catalog.DatabaseName(bigID)), bigID, bigKey, written)
	require.EqualValues(t, 1, f.planChanges(t, bigID, "pooled-fast", "dedicated-fast"))

	// The pool's first tenant kept its rows throughout.
	exactlyOnce(poolDSN, id, growingKey, all)
}

// TestChangePlanCancelledKeepsTheOldPlan: a change of plan across tiers that
// is cancelled before its switch leaves the tenant where it was on its old
// plan; a moving tenant's plan cannot be changed; a promotion or demotion
// with a plan of the wrong tier is refused before anything starts.
func TestChangePlanCancelledKeepsTheOldPlan(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	pool := f.createPool(t, "pg-1", 10)
	tenant, key := f.pooledWithKey(t, "hesitant")
	id := tenant["id"].(string)
	status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": "kept@example.com"})
	require.Equal(t, http.StatusCreated, status, body)

	for _, bad := range []struct{ path, plan, says string }{
		{"promote", "free", `plan "free" is pooled: a promote needs a dedicated plan`},
		{"promote", "platinum", "plans: basic, enterprise, free, pro"},
	} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/hesitant/"+bad.path, testToken, map[string]any{"plan": bad.plan})
		require.Equal(t, http.StatusBadRequest, status, body)
		require.Contains(t, body["error"].(map[string]any)["message"], bad.says)
	}
	status, body = call(t, "GET", f.admin+"/admin/v1/moves", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Empty(t, body["moves"], "a refused promotion starts nothing")

	// The move waits while the source's migration lock is held (as during a
	// fan-out), so it is surely under way while we look.
	lockID, err := database.GenerateAdvisoryLockId(pool["name"].(string), "public", "schema_migrations")
	require.NoError(t, err)
	n, err := strconv.ParseInt(lockID, 10, 64)
	require.NoError(t, err)
	conn, err := connect(t, f.servers["pg-1"].DSN(pool["name"].(string)))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), "SELECT pg_advisory_lock($1)", n)
	require.NoError(t, err)

	status, body = f.changePlan(t, "hesitant", map[string]any{"plan": "pro"})
	require.Equal(t, http.StatusAccepted, status, body)
	move := body["move"].(map[string]any)
	status, body = f.changePlan(t, "hesitant", map[string]any{"plan": "basic"})
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], fmt.Sprintf("is being moved (move %v)", move["id"]))
	status, body = f.changePlan(t, "hesitant", map[string]any{"plan": "free"})
	require.Equal(t, http.StatusConflict, status, "even to its own plan: %v", body)
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/moves/%v/cancel", f.admin, move["id"]), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	_, err = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", n)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, body = call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, move["id"]), testToken, nil)
		return body["phase"] == "aborted"
	}, 60*time.Second, 50*time.Millisecond, "the cancelled move ends aborted: %v", body)

	status, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/hesitant", testToken, nil)
	require.Equal(t, http.StatusOK, status, tenant)
	require.Equal(t, "free", tenant["plan"], "the old plan stays")
	require.Equal(t, pool["name"], tenant["pool"])
	require.Nil(t, tenant["move_id"])
	require.Zero(t, f.planChanges(t, id, "free", "pro"))
	status, page := call(t, "GET", f.api+"/v1/users", key, nil)
	require.Equal(t, http.StatusOK, status, page)
	require.Len(t, page["users"], 1)
	db, role := dbAndRoleExist(t, f.servers["pg-1"], catalog.DatabaseName(id))
	require.False(t, db || role, "the aborted promotion's target is gone")
}

// TestServerCapacityLeavesPooledTenantsApart: a server's tenants and
// capacity are the tenants with a database of their own there; its pool
// databases and pooled tenants are shown beside them and take no part in
// it, so a full server still takes pooled tenants in its pools, and refuses
// a change of plan that would give one a database there.
func TestServerCapacityLeavesPooledTenantsApart(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	f.createPool(t, "pg-1", 10)
	f.pooledWithKey(t, "small-a")
	status, body := call(t, "PATCH", f.admin+"/admin/v1/servers/pg-1", testToken, map[string]any{"capacity": 1})
	require.Equal(t, http.StatusOK, status, body)
	status, body = f.createTenant(t, "big", true)
	require.Equal(t, http.StatusCreated, status, body)
	status, body = f.createTenant(t, "bigger", false)
	require.Equal(t, http.StatusConflict, status, "the server is full for databases: %v", body)
	f.pooledWithKey(t, "small-b")

	status, body = call(t, "GET", f.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	srv := body["servers"].([]any)[0].(map[string]any)
	require.EqualValues(t, 1, srv["capacity"])
	require.EqualValues(t, 1, srv["tenants"], "the dedicated tenant")
	require.EqualValues(t, 1, srv["pool_databases"])
	require.EqualValues(t, 2, srv["pooled_tenants"])

	f.planRefused(t, "small-a", "pro", "server pg-1 is full: 1 tenants of a capacity of 1", "free")
}

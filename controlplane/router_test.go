package controlplane

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// tenantWithKey creates an active tenant and returns it with a fresh API key.
func (f *fleet) tenantWithKey(t testing.TB, slug, plan, server string) (map[string]any, string) {
	t.Helper()
	body := map[string]any{"slug": slug, "name": "Tenant " + slug, "plan": plan}
	if server != "" {
		body["server"] = server
	}
	status, tenant := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken, body)
	require.Equal(t, http.StatusCreated, status, tenant)
	status, key := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status, key)
	return tenant, key["key"].(string)
}

// try is call for goroutines: it reports failures as an error instead of stopping the test.
func try(method, url, token string, body string) (int, string, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), err
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	const n = 20
	keys := make([]string, n)
	userIDs := make([]string, n)
	for i := range n {
		slug := fmt.Sprintf("iso-%02d", i)
		_, keys[i] = f.tenantWithKey(t, slug, "enterprise", "")
		for j := range 3 {
			// The same email in every tenant: uniqueness is per tenant database.
			status, body := call(t, "POST", f.api+"/v1/users", keys[i], map[string]any{"email": fmt.Sprintf("user%d@example.com", j), "name": slug})
			require.Equal(t, http.StatusCreated, status, body)
			userIDs[i] = body["id"].(string)
		}
	}

	// Every read with tenant A's key sees only A's rows, under concurrent load.
	var wg sync.WaitGroup
	var bad atomic.Int64
	errs := make(chan string, 100)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slug := fmt.Sprintf("iso-%02d", i)
			for range 15 {
				status, body, err := try("GET", f.api+"/v1/users?limit=100", keys[i], "")
				if err != nil || status != http.StatusOK || strings.Count(body, `"name":"`+slug+`"`) != 3 || strings.Count(body, `"name":"iso-`) != 3 {
					bad.Add(1)
					select {
					case errs <- fmt.Sprintf("%s: %d %v %s", slug, status, err, body):
					default:
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	require.Zero(t, bad.Load())

	// A's key with B's user id: not found, for every verb.
	for _, method := range []string{"GET", "PATCH", "DELETE"} {
		status, body := call(t, method, f.api+"/v1/users/"+userIDs[1], keys[0], map[string]any{"name": "stolen"})
		require.Equal(t, http.StatusNotFound, status, "%s: %v", method, body)
	}
	status, body := call(t, "GET", f.api+"/v1/users/"+userIDs[1], keys[1], nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "iso-01", body["name"], "B's user is untouched")

	// /v1/me names the key's own tenant.
	status, body = call(t, "GET", f.api+"/v1/me", keys[3], nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "iso-03", body["slug"])
}

func TestTenantAPIUsersAndErrors(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	_, key := f.tenantWithKey(t, "crud", "enterprise", "")
	u := f.api + "/v1/users"

	status, created := call(t, "POST", u, key, map[string]any{"email": "ada@example.com", "name": "Ada"})
	require.Equal(t, http.StatusCreated, status, created)
	id := created["id"].(string)
	status, body := call(t, "POST", u, key, map[string]any{"email": "ada@example.com"})
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "email already exists")
	for _, bad := range []any{map[string]any{"name": "no email"}, map[string]any{"email": "not-an-email"}, map[string]any{"email": "x@y.z", "name": strings.Repeat("n", 201)}, "[]",
		map[string]any{"email": "x@y.z", "nmae": "misspelt"}} {
		status, body := call(t, "POST", u, key, bad)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", bad, body)
	}
	status, body = call(t, "PATCH", u+"/"+id, key, map[string]any{"name": "Ada L."})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "Ada L.", body["name"])
	require.Equal(t, "ada@example.com", body["email"])
	status, _ = call(t, "GET", u+"/not-a-uuid", key, nil)
	require.Equal(t, http.StatusNotFound, status)

	// Cursor pages.
	for i := range 4 {
		status, body := call(t, "POST", u, key, map[string]any{"email": fmt.Sprintf("u%d@example.com", i)})
		require.Equal(t, http.StatusCreated, status, body)
	}
	var seen []string
	cursor := ""
	for range 10 {
		_, body := call(t, "GET", u+"?limit=2&cursor="+cursor, key, nil)
		for _, x := range body["users"].([]any) {
			seen = append(seen, x.(map[string]any)["email"].(string))
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, []string{"ada@example.com", "u0@example.com", "u1@example.com", "u2@example.com", "u3@example.com"}, seen)
	status, _ = call(t, "GET", u+"?cursor=zzz", key, nil)
	require.Equal(t, http.StatusBadRequest, status)

	status, _ = call(t, "DELETE", u+"/"+id, key, nil)
	require.Equal(t, http.StatusNoContent, status)
	status, _ = call(t, "GET", u+"/"+id, key, nil)
	require.Equal(t, http.StatusNotFound, status)

	// A body over 1 MiB: 413, nothing stored.
	big := `{"email": "big@example.com", "name": "` + strings.Repeat("x", 1<<20) + `"}`
	status, raw, err := try("POST", u, key, big)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestEntityTooLarge, status, raw)

	// No key, a bad key, a revoked key: 401.
	for _, k := range []string{"", "tp_nope", "Bearer-less"} {
		status, body := call(t, "GET", f.api+"/v1/me", k, nil)
		require.Equal(t, http.StatusUnauthorized, status)
		require.Equal(t, "unauthorized", errorCode(t, body))
	}
}

func TestRateLimitByPlan(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	// A plan slow enough that the test cannot outrun it, however loaded the machine.
	query[int](t, f.app.cfg.DatabaseURL, `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst) VALUES ('trickle', 1, 1, 3) RETURNING 1`)
	_, key := f.tenantWithKey(t, "chatty", "trickle", "")
	var limited int
	var retryAfter string
	start := time.Now()
	for range 10 {
		req, _ := http.NewRequest("GET", f.api+"/v1/me", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			limited++
			retryAfter = resp.Header.Get("Retry-After")
		} else {
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
	}
	// At most the burst of 3 plus one per second elapsed got through.
	allowed := 3 + int(time.Since(start).Seconds()) + 1
	require.GreaterOrEqual(t, limited, 10-allowed, "a burst over the plan's limit is refused")
	require.Positive(t, limited)
	secs, err := strconv.Atoi(retryAfter)
	require.NoError(t, err)
	require.GreaterOrEqual(t, secs, 1)
}

func TestPoolCacheUnderChurnHoldsTheBudget(t *testing.T) {
	t.Parallel()
	const budget = 8
	f := setupFleetOpts(t, 1, map[string]string{"TENANTPLANE_POOL_CACHE_SIZE": "5"}, budget)
	const n = 50
	keys := make([]string, n)
	for i := range n {
		_, keys[i] = f.tenantWithKey(t, fmt.Sprintf("churn-%02d", i), "pro", "")
	}
	srv := f.servers["pg-1"]

	// Watch the server's tenant connections while traffic runs.
	stop := make(chan struct{})
	var peak atomic.Int64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		conn, err := connect(t, srv.DSN("postgres"))
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		for {
			var c int64
			if conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE usename ~ '^t_[0-9a-f]{32}$'`).Scan(&c) == nil && c > peak.Load() {
				peak.Store(c)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for w := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				k := keys[(w*7+i*13)%n]
				status, body, err := try("GET", f.api+"/v1/users", k, "")
				if err != nil || status != http.StatusOK {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %v %s", status, err, body))
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	require.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
	require.LessOrEqual(t, peak.Load(), int64(budget), "connections on the server never exceed its budget")
	require.Positive(t, peak.Load())

	// A fresh tenant's first concurrent burst opens exactly one pool.
	_, key := f.tenantWithKey(t, "burst", "pro", "")
	before := metric(t, f.admin, "tenantplane_router_pools_opened_total")
	var burst sync.WaitGroup
	for range 20 {
		burst.Add(1)
		go func() {
			defer burst.Done()
			_, _, _ = try("GET", f.api+"/v1/users", key, "")
		}()
	}
	burst.Wait()
	require.Equal(t, before+1, metric(t, f.admin, "tenantplane_router_pools_opened_total"))
	require.LessOrEqual(t, metric(t, f.admin, "tenantplane_router_pools_cached"), 5.0)

	// Purged (the app stops): no tenant connection is left on the server.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, f.app.Stop(ctx))
	require.Zero(t, query[int64](t, srv.DSN("postgres"), `SELECT count(*) FROM pg_stat_activity WHERE usename ~ '^t_[0-9a-f]{32}$'`))
}

// metric reads one unlabelled sample from the admin /metrics endpoint.
func metric(t testing.TB, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(string(raw))
	require.NotNil(t, m, "no metric %s", name)
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

func TestSuspendReachesAnotherInstanceWithinASecond(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_SECRET_KEY": secret})
	_, key := f.tenantWithKey(t, "suspendme", "pro", "")
	second := setupEnv(t, f.app.cfg.DatabaseURL, map[string]string{"TENANTPLANE_SECRET_KEY": secret})

	status, _ := call(t, "GET", second.api+"/v1/users", key, nil)
	require.Equal(t, http.StatusOK, status, "the second instance serves the tenant, and caches it")

	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/suspendme/suspend", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	start := time.Now()
	for {
		status, body := call(t, "GET", second.api+"/v1/users", key, nil)
		if status == http.StatusForbidden {
			require.Equal(t, "forbidden", errorCode(t, body))
			break
		}
		require.Less(t, time.Since(start), time.Second, "suspension did not reach the second instance within a second")
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("suspension reached the second instance after %v", time.Since(start))

	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/suspendme/resume", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", second.api+"/v1/users", key, nil)
		return status == http.StatusOK
	}, time.Second, 10*time.Millisecond)

	// A revoked key stops working on the second instance too.
	_, keys := call(t, "GET", f.admin+"/admin/v1/tenants/suspendme/keys", testToken, nil)
	id := keys["keys"].([]any)[0].(map[string]any)["id"].(string)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/suspendme/keys/"+id, testToken, nil)
	require.Equal(t, http.StatusNoContent, status)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", second.api+"/v1/me", key, nil)
		return status == http.StatusUnauthorized
	}, time.Second, 10*time.Millisecond)

	// Deleted: 404.
	_, key2 := f.tenantWithKey(t, "deleteme", "pro", "")
	status, _ = call(t, "GET", second.api+"/v1/me", key2, nil)
	require.Equal(t, http.StatusOK, status)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/deleteme", testToken, nil)
	require.Equal(t, http.StatusAccepted, status)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", second.api+"/v1/me", key2, nil)
		return status == http.StatusNotFound
	}, time.Second, 10*time.Millisecond)
}

func TestStoppedServerOnlyAffectsItsTenants(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	_, downKey := f.tenantWithKey(t, "on-the-down-one", "enterprise", "pg-1")
	_, upKey := f.tenantWithKey(t, "on-the-up-one", "enterprise", "pg-2")
	for _, k := range []string{downKey, upKey} {
		status, _ := call(t, "GET", f.api+"/v1/users", k, nil)
		require.Equal(t, http.StatusOK, status)
	}

	// Traffic to the healthy server's tenant, all along.
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, _, err := try("GET", f.api+"/v1/users", upKey, "")
				if err == nil && status == http.StatusOK {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
				time.Sleep(10 * time.Millisecond) // stay well under the plan's rate limit
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	f.servers["pg-1"].Stop(t)
	for range 3 {
		start := time.Now()
		status, body := call(t, "GET", f.api+"/v1/users", downKey, nil)
		require.Equal(t, http.StatusServiceUnavailable, status, body)
		require.Less(t, time.Since(start), 2*time.Second, "a dead server's tenant gets 503 fast")
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	require.Zero(t, failed.Load(), "the other server's tenant saw errors")
	require.Positive(t, ok.Load())

	f.servers["pg-1"].Start(t)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/users", downKey, nil)
		return status == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond, "the tenant recovers when its server is back")
}

func TestMeteringCountsEveryRequestOnceAcrossARestart(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	env := map[string]string{"TENANTPLANE_SECRET_KEY": secret, "TENANTPLANE_USAGE_FLUSH_INTERVAL": "200ms"}
	f := setupFleet(t, 1, env)
	tenant, key := f.tenantWithKey(t, "metered", "enterprise", "")

	send := func(base string, n int) {
		for range n {
			status, _, err := try("GET", base+"/v1/me", key, "")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status)
		}
	}
	send(f.api, 600)
	// A graceful stop flushes what is counted.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, f.app.Stop(ctx))
	second := setupEnv(t, f.app.cfg.DatabaseURL, env)
	send(second.api, 400)

	usage := func() int64 {
		u, err := second.app.store.TenantUsage(context.Background(), tenant["id"].(string), time.Now())
		require.NoError(t, err)
		return u[catalog.MeterAPICalls]
	}
	require.Eventually(t, func() bool { return usage() == 1000 }, 5*time.Second, 50*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // two more flush intervals: nothing counted twice
	require.Equal(t, int64(1000), usage())

	// The tenant sees its own usage.
	status, body := call(t, "GET", second.api+"/v1/usage", key, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 1000, body["usage"].(map[string]any)[catalog.MeterAPICalls])
}

func TestCatalogDownKeepsResolvedTenantsServed(t *testing.T) {
	t.Parallel()
	catalogServer := pgtest.NewServer(t)
	f := setupFleetOn(t, catalogServer.NewDB(t), 1, nil, 0)
	_, known := f.tenantWithKey(t, "known", "enterprise", "")
	_, unused := f.tenantWithKey(t, "not-yet-seen", "enterprise", "")
	status, _ := call(t, "GET", f.api+"/v1/users", known, nil)
	require.Equal(t, http.StatusOK, status)

	catalogServer.Stop(t)
	for range 5 {
		status, body := call(t, "GET", f.api+"/v1/users", known, nil)
		require.Equal(t, http.StatusOK, status, "a resolved tenant is served while the catalog is down: %v", body)
	}
	// At a host name the router has not looked up (a custom hostname would
	// be), too: the host routes by key alone until the catalog answers.
	status, _, body := callHost(t, f.api+"/v1/users", "api.shared.test", known)
	require.Equal(t, http.StatusOK, status, body)
	start := time.Now()
	status, unusedBody := call(t, "GET", f.api+"/v1/users", unused, nil)
	require.Equal(t, http.StatusServiceUnavailable, status, unusedBody)
	require.Less(t, time.Since(start), 5*time.Second)
	status, _ = call(t, "GET", f.admin+"/admin/v1/tenants", testToken, nil)
	require.Equal(t, http.StatusServiceUnavailable, status, "admin calls answer 503 while the catalog is down")

	catalogServer.Start(t)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/users", unused, nil)
		return status == http.StatusOK
	}, 15*time.Second, 100*time.Millisecond)
}

// A user's name is at most 200 characters, counted as the database's CHECK
// counts them (code points), not bytes.
func TestTenantAPIUserNameCountsCharacters(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	_, key := f.tenantWithKey(t, "runes", "pro", "")
	u := f.api + "/v1/users"

	long := strings.Repeat("é", 200) // 400 bytes
	status, body := call(t, "POST", u, key, map[string]any{"email": "e@example.com", "name": long})
	require.Equal(t, http.StatusCreated, status, body)
	require.Equal(t, long, body["name"])
	id := body["id"].(string)

	clef := strings.Repeat("𝄞", 200) // 800 bytes
	status, body = call(t, "PATCH", u+"/"+id, key, map[string]any{"name": clef})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, clef, body["name"])

	for _, tooLong := range []string{long + "é", clef + "x", strings.Repeat("n", 201)} {
		status, body = call(t, "POST", u, key, map[string]any{"email": "other@example.com", "name": tooLong})
		require.Equal(t, http.StatusBadRequest, status, body)
		require.Equal(t, "invalid", errorCode(t, body))
		require.Equal(t, "name is longer than 200 characters", body["error"].(map[string]any)["message"])
		status, body = call(t, "PATCH", u+"/"+id, key, map[string]any{"name": tooLong})
		require.Equal(t, http.StatusBadRequest, status, body)
		require.Equal(t, "name is longer than 200 characters", body["error"].(map[string]any)["message"])
	}
	status, body = call(t, "GET", u+"/"+id, key, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, clef, body["name"], "a refused change changes nothing")
}

// TestConnBudgetChangeReachesAnotherInstanceWithinASecond: an operator's
// PATCH of a server's conn_budget reaches a running router, no restart:
// within a second it holds its share (conn_budget / TENANTPLANE_REPLICAS) of
// the new budget, smaller or larger.
func TestConnBudgetChangeReachesAnotherInstanceWithinASecond(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	f := setupFleetOpts(t, 1, map[string]string{"TENANTPLANE_SECRET_KEY": secret}, 6)
	keys := make([]string, 3)
	for i := range keys {
		_, keys[i] = f.tenantWithKey(t, fmt.Sprintf("budget-%d", i), "basic", "")
	}
	second := setupEnv(t, f.app.cfg.DatabaseURL, map[string]string{"TENANTPLANE_SECRET_KEY": secret, "TENANTPLANE_REPLICAS": "2"})
	srv := f.servers["pg-1"]
	tenantConns := func() int64 {
		return query[int64](t, srv.DSN("postgres"), `SELECT count(*) FROM pg_stat_activity WHERE usename ~ '^t_[0-9a-f]{32}$'`)
	}
	// One request per tenant, one after another: each pool keeps its
	// connection idle while the share allows, or takes one from another.
	serve := func() {
		for _, k := range keys {
			status, body := call(t, "GET", second.api+"/v1/users", k, nil)
			require.Equal(t, http.StatusOK, status, body)
		}
	}
	setBudget := func(n int) {
		status, body := call(t, "PATCH", f.admin+"/admin/v1/servers/pg-1", testToken, map[string]any{"conn_budget": n})
		require.Equal(t, http.StatusOK, status, body)
		require.EqualValues(t, n, body["conn_budget"])
	}

	serve()
	require.EqualValues(t, 3, tenantConns(), "a share of 6/2 = 3 keeps the three tenants' connections")

	setBudget(2) // a share of 1
	start := time.Now()
	for tenantConns() > 1 {
		require.Less(t, time.Since(start), time.Second, "the smaller budget did not reach the second instance within a second")
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the smaller budget reached the second instance after %v", time.Since(start))
	serve()
	require.LessOrEqual(t, tenantConns(), int64(1), "every tenant is served within a share of 1")

	setBudget(6) // a share of 3 again
	start = time.Now()
	for {
		serve()
		if tenantConns() == 3 {
			break
		}
		require.Less(t, time.Since(start), time.Second, "the larger budget did not reach the second instance within a second")
		time.Sleep(10 * time.Millisecond)
	}

	status, body := call(t, "GET", f.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 6, body["servers"].([]any)[0].(map[string]any)["conn_budget"])
	for _, bad := range []map[string]any{{}, {"conn_budget": 0}, {"capacity": -1}, {"conn_budgets": 3}} {
		status, body := call(t, "PATCH", f.admin+"/admin/v1/servers/pg-1", testToken, bad)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", bad, body)
	}
	status, _ = call(t, "PATCH", f.admin+"/admin/v1/servers/nowhere", testToken, map[string]any{"capacity": 3})
	require.Equal(t, http.StatusNotFound, status)
}

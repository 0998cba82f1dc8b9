package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// timed is call with how long the answer took.
func timed(t testing.TB, method, url, token string) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	status, _ := call(t, method, url, token, nil)
	return status, time.Since(start)
}

// TestCatalogFaults puts each network fault in turn on the catalog's wire
// (latency, a hang, resets, a slow bandwidth, a sliced stream) under a
// running tenantplane: tenants already resolved keep being served, at their
// address and at a hostname; while the catalog hangs or resets, a key never
// seen and an admin call answer 503 within seconds instead of hanging; when
// the fault is gone everything works again with no restart; and the usage
// counted meanwhile reaches the catalog exactly once, every flush that
// failed retried, none counted twice. It runs alone: it checks that no
// goroutine is left running once the process has stopped.
func TestCatalogFaults(t *testing.T) {
	catalogDSN := pgtest.NewDB(t)
	faulttest.VerifyNoLeaks(t)
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	proxy, dsn := faulttest.ProxyDSN(t, "catalog", catalogDSN)
	f := setupFleetOn(t, dsn, 1, map[string]string{"TENANTPLANE_USAGE_FLUSH_INTERVAL": "200ms"}, 0)
	known, key := f.tenantWithKey(t, "known", "enterprise", "")
	ids := []string{known["id"].(string)}
	served := 0
	serve := func(what string) {
		t.Helper()
		for range 5 {
			status, _, err := try("GET", f.api+"/v1/users", key, "")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status, "%s: a resolved tenant is served", what)
			served++
		}
		// At a hostname (looked up in the catalog, at most every 10 s), too.
		status, _, body := callHost(t, f.api+"/v1/users", "api.catalog-faults.test", key)
		require.Equal(t, http.StatusOK, status, "%s: %s", what, body)
		served++
	}
	serve("before the faults")

	total := func() int64 {
		var n int64
		for _, id := range ids {
			u, err := f.app.store.TenantUsage(context.Background(), id, time.Now())
			require.NoError(t, err)
			n += u[catalog.MeterAPICalls]
		}
		return n
	}
	faults := faulttest.Each()
	for i, fault := range faults {
		// A key the router has never seen, for this round.
		tn, fresh := f.tenantWithKey(t, fmt.Sprintf("fresh-%d", i), "enterprise", "")
		ids = append(ids, tn["id"].(string))
		remove := proxy.Add(t, fault)
		serve(fault.Name)
		stops := fault.Name == "hang" || fault.Name == "reset"
		status, took := timed(t, "GET", f.api+"/v1/me", fresh)
		admin, adminTook := timed(t, "GET", f.admin+"/admin/v1/tenants", testToken)
		t.Logf("%s: a new key answered %d in %v, an admin call %d in %v", fault.Name, status, took, admin, adminTook)
		if stops {
			require.Equal(t, http.StatusServiceUnavailable, status, "%s: a new key", fault.Name)
			require.Less(t, took, 4*time.Second, "%s: a new key answers fast", fault.Name)
			require.Equal(t, http.StatusServiceUnavailable, admin, "%s: an admin call", fault.Name)
			require.Less(t, adminTook, 4*time.Second, "%s: an admin call answers fast", fault.Name)
		} else {
			if status == http.StatusOK {
				served++
			}
			require.Equal(t, http.StatusOK, status, "%s: a slow catalog still answers", fault.Name)
			require.Equal(t, http.StatusOK, admin, "%s: a slow catalog still answers", fault.Name)
		}
		time.Sleep(600 * time.Millisecond) // flushes fail (or crawl) meanwhile
		serve(fault.Name + ", later")
		remove()

		// Back by itself: the admin API, and the new key.
		require.Eventually(t, func() bool {
			status, _ := call(t, "GET", f.admin+"/admin/v1/tenants", testToken, nil)
			return status == http.StatusOK
		}, 20*time.Second, 100*time.Millisecond, "%s: the admin API answers again", fault.Name)
		require.Eventually(t, func() bool {
			status, _, err := try("GET", f.api+"/v1/me", fresh, "")
			if err == nil && status == http.StatusOK {
				served++
				return true
			}
			return false
		}, 20*time.Second, 100*time.Millisecond, "%s: the new key works once the catalog answers", fault.Name)

		// Every request counted once: each failed flush was retried, with
		// no restart, and none counted twice.
		require.Eventually(t, func() bool { return total() == int64(served) }, 15*time.Second, 100*time.Millisecond,
			"%s: usage reaches the %d api_calls served", fault.Name, served)
		time.Sleep(time.Second) // five more flush intervals
		require.Equal(t, int64(served), total(), "%s: nothing counted twice", fault.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, f.app.store.Ping(ctx))
}

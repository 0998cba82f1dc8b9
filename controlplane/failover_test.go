package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestCatalogFailover runs tenantplane on a catalog with a streaming
// standby, its DATABASE_URL naming both hosts with
// target_session_attrs=read-write. The primary is stopped and the standby
// promoted, under traffic: the tenants keep being served throughout;
// admin calls answer again once the switch is over, with nothing restarted;
// the router hears changes on the new primary (its LISTEN follows) and
// reads again what changed while it was away; River's jobs run there (a
// tenant is provisioned); and every request is counted once (no usage
// flush lost).
func TestCatalogFailover(t *testing.T) {
	t.Parallel()
	primary := pgtest.NewServer(t)
	catalogDSN := primary.NewDB(t)
	standby := pgtest.NewStandby(t, primary)
	u, err := url.Parse(catalogDSN)
	require.NoError(t, err)
	u.Host = fmt.Sprintf("%s,%s", primary.Addr(), standby.Addr())
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	f := setupFleetOn(t, u.String(), 1, map[string]string{"TENANTPLANE_USAGE_FLUSH_INTERVAL": "200ms"}, 0)
	known, key := f.tenantWithKey(t, "known", "enterprise", "")
	_, missedKey := f.tenantWithKey(t, "changed-while-away", "enterprise", "")
	_, watchedKey := f.tenantWithKey(t, "watched", "enterprise", "")
	for _, k := range []string{key, missedKey, watchedKey} {
		status, _ := call(t, "GET", f.api+"/v1/me", k, nil)
		require.Equal(t, http.StatusOK, status)
	}
	served := int64(1) // known's request above

	// known's traffic, all along.
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var failures sync.Map
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			status, body, err := try("GET", f.api+"/v1/users", key, "")
			if err == nil && status == http.StatusOK {
				ok.Add(1)
			} else {
				failed.Add(1)
				failures.Store(fmt.Sprint(status, err, body), true)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	time.Sleep(300 * time.Millisecond)

	// The primary goes first (a clean stop sends the standby all it has),
	// then the standby is promoted: the order of a failover. Promoted
	// first, the old primary would take writes that the new one never sees.
	primary.Stop(t)
	standby.Promote(t)
	switched := time.Now()
	// A change the router cannot hear: made on the new primary before its
	// listener is back (it may be back already; then it hears it).
	conn, err := connect(t, standby.DSN(catalogDSNName(t, catalogDSN)))
	require.NoError(t, err)
	_, err = conn.Exec(context.Background(), `UPDATE tenants SET state = 'suspended' WHERE slug = 'changed-while-away'`)
	require.NoError(t, err)
	conn.Close(context.Background())

	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.admin+"/admin/v1/tenants", testToken, nil)
		return status == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond, "admin calls answer again after the switch")
	t.Logf("admin API back %v after the promotion", time.Since(switched))
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/me", missedKey, nil)
		return status == http.StatusForbidden
	}, 15*time.Second, 100*time.Millisecond, "a change made while the listener was away is read again")
	status, _ := call(t, "POST", f.admin+"/admin/v1/tenants/watched/suspend", testToken, map[string]any{})
	require.Equal(t, http.StatusOK, status)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/me", watchedKey, nil)
		return status == http.StatusForbidden
	}, time.Second, 10*time.Millisecond, "a suspension on the new primary reaches the router within a second")
	status, body := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken, map[string]any{"slug": "after-failover", "name": "a", "plan": "pro"})
	require.Equal(t, http.StatusCreated, status, "River's jobs run on the new primary: %v", body)

	close(stop)
	wg.Wait()
	failures.Range(func(k, _ any) bool {
		t.Errorf("a request of a resolved tenant failed during the failover: %v", k)
		return true
	})
	require.Zero(t, failed.Load())
	served += ok.Load()
	counted := func() int64 {
		u, err := f.app.store.TenantUsage(context.Background(), known["id"].(string), time.Now())
		require.NoError(t, err)
		return u[catalog.MeterAPICalls]
	}
	for deadline := time.Now().Add(15 * time.Second); counted() != served && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, served, counted(), "every request counted once: no usage flush lost")
}

// catalogDSNName is the database name of a DSN.
func catalogDSNName(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	return u.Path[1:]
}

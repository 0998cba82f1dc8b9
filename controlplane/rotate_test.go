package controlplane

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// Rotating a tenant's credentials changes the role's password on its server
// and in the catalog; a second running instance drops its pool within a
// second and serves the tenant on a new one, with no request failing.
func TestRotateCredentialsReachesAnotherInstance(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_SECRET_KEY": secret})
	tenant, key := f.tenantWithKey(t, "rotateme", "pro", "")
	id := tenant["id"].(string)
	stored, err := f.app.store.GetTenant(context.Background(), "rotateme")
	require.NoError(t, err)
	role, database := stored.Role, stored.Database
	second := setupEnv(t, f.app.cfg.DatabaseURL, map[string]string{"TENANTPLANE_SECRET_KEY": secret})
	status, _ := call(t, "GET", second.api+"/v1/users", key, nil)
	require.Equal(t, http.StatusOK, status, "the second instance opens and caches the tenant's pool")
	opened := metric(t, second.admin, "tenantplane_router_pools_opened_total")
	old := tenantPassword(t, f, id)

	status, body := call(t, "POST", f.admin+"/admin/v1/tenants/rotateme/rotate-credentials", testToken, map[string]any{"reason": "leaked in a log"})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "active", body["state"])
	start := time.Now()
	for metric(t, second.admin, "tenantplane_router_pools_opened_total") == opened {
		status, body := call(t, "GET", second.api+"/v1/users", key, nil)
		require.Equal(t, http.StatusOK, status, "no request fails while the credentials change: %v", body)
		require.Less(t, time.Since(start), time.Second, "the second instance still uses its old pool after a second")
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the second instance opened a new pool %v after the rotation", time.Since(start))

	srv := f.servers["pg-1"]
	fresh := tenantPassword(t, f, id)
	require.NotEqual(t, old, fresh)
	conn, err := connect(t, dsnAs(t, srv, role, fresh, database))
	require.NoError(t, err, "the new password logs in")
	conn.Close(context.Background())
	_, err = connect(t, dsnAs(t, srv, role, old, database))
	require.ErrorContains(t, err, "password authentication failed", "the old one does not")

	events, err := f.app.store.ListAudit(context.Background(), catalog.AuditFilter{TenantID: id, Action: "tenant.credentials_rotated"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "leaked in a log", events[0].Reason)

	// Only tenants that have a role in use can rotate; nothing changes otherwise.
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/nosuch/rotate-credentials", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/rotateme", testToken, nil)
	require.Equal(t, http.StatusAccepted, status)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/rotateme/rotate-credentials", testToken, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Equal(t, fresh, tenantPassword(t, f, id))
}

// A server that refuses the new password leaves the catalog as it was.
func TestRotateCredentialsWithItsServerDownChangesNothing(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	tenant, _ := f.tenantWithKey(t, "rotatedown", "pro", "")
	id := tenant["id"].(string)
	old := tenantPassword(t, f, id)
	f.servers["pg-1"].Stop(t)
	defer f.servers["pg-1"].Start(t)

	status, body := call(t, "POST", f.admin+"/admin/v1/tenants/rotatedown/rotate-credentials", testToken, nil)
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Equal(t, "unavailable", errorCode(t, body))
	require.Contains(t, body["error"].(map[string]any)["message"], `server "pg-1" did not take tenant "rotatedown"'s new password; nothing changed`)
	require.Equal(t, old, tenantPassword(t, f, id))
	events, err := f.app.store.ListAudit(context.Background(), catalog.AuditFilter{TenantID: id, Action: "tenant.credentials_rotated"})
	require.NoError(t, err)
	require.Empty(t, events)
}

package controlplane

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	for _, slug := range []string{"key-owner", "someone-else"} {
		status, body := f.createTenant(t, slug, true)
		require.Equal(t, http.StatusCreated, status, body)
	}

	status, created := call(t, "POST", f.admin+"/admin/v1/tenants/key-owner/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status, created)
	key := created["key"].(string)
	require.True(t, strings.HasPrefix(key, "tp_"), key)
	require.GreaterOrEqual(t, len(key)-len("tp_"), 43, "at least 32 bytes of entropy in base64url")
	require.True(t, strings.HasPrefix(key, created["prefix"].(string)))

	// Listing shows the prefix, never the key.
	status, body := call(t, "GET", f.admin+"/admin/v1/tenants/key-owner/keys", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	keys := body["keys"].([]any)
	require.Len(t, keys, 1)
	listed := keys[0].(map[string]any)
	require.Equal(t, created["id"], listed["id"])
	require.Nil(t, listed["revoked_at"])
	require.NotContains(t, listed, "key")

	// The key works, and its use is recorded (within a flush interval).
	status, _ = call(t, "GET", f.api+"/v1/me", key, nil)
	require.Equal(t, http.StatusOK, status)
	require.Eventually(t, func() bool {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants/key-owner/keys", testToken, nil)
		return body["keys"].([]any)[0].(map[string]any)["last_used_at"] != nil
	}, 10*time.Second, 100*time.Millisecond, "last_used_at is set after the key is used")

	// Only a hash is stored.
	stored := query[bool](t, f.app.cfg.DatabaseURL, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE position(convert_to($1, 'UTF8') in hash) > 0 OR prefix = $1)`, key)
	require.False(t, stored)

	// Another tenant cannot revoke it; its owner can.
	id := created["id"].(string)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/someone-else/keys/"+id, testToken, nil)
	require.Equal(t, http.StatusNotFound, status)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/key-owner/keys/not-a-uuid", testToken, nil)
	require.Equal(t, http.StatusNotFound, status)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/key-owner/keys/"+id, testToken, nil)
	require.Equal(t, http.StatusNoContent, status)
	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/key-owner/keys", testToken, nil)
	require.NotNil(t, body["keys"].([]any)[0].(map[string]any)["revoked_at"])

	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/nobody/keys", testToken, nil)
	require.Equal(t, http.StatusNotFound, status)
}

func TestListTenantsFiltersAndPages(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	for _, slug := range []string{"list-a", "list-b", "list-c", "list-d", "list-e"} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken, map[string]any{"slug": slug, "name": slug, "plan": "basic", "server": "pg-1"})
		require.Equal(t, http.StatusCreated, status, body)
	}
	status, body := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken, map[string]any{"slug": "list-f", "name": "f", "plan": "pro", "server": "pg-2"})
	require.Equal(t, http.StatusCreated, status, body)
	call(t, "POST", f.admin+"/admin/v1/tenants/list-b/suspend", testToken, nil)

	var seen []string
	cursor := ""
	for pages := 0; pages < 10; pages++ {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants?limit=2&cursor="+cursor, testToken, nil)
		for _, tn := range body["tenants"].([]any) {
			seen = append(seen, tn.(map[string]any)["slug"].(string))
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, []string{"list-a", "list-b", "list-c", "list-d", "list-e", "list-f"}, seen)

	slugs := func(query string) []string {
		status, body := call(t, "GET", f.admin+"/admin/v1/tenants?"+query, testToken, nil)
		require.Equal(t, http.StatusOK, status, body)
		var out []string
		for _, tn := range body["tenants"].([]any) {
			out = append(out, tn.(map[string]any)["slug"].(string))
		}
		return out
	}
	require.Equal(t, []string{"list-b"}, slugs("state=suspended"))
	require.Equal(t, []string{"list-f"}, slugs("plan=pro"))
	require.Equal(t, []string{"list-f"}, slugs("server=pg-2"))
	require.Len(t, slugs("server=pg-1&state=active"), 4)

	status, body = call(t, "GET", f.admin+"/admin/v1/tenants?cursor=garbage", testToken, nil)
	require.Equal(t, http.StatusBadRequest, status, body)
	status, _ = call(t, "GET", f.admin+"/admin/v1/tenants?limit=0", testToken, nil)
	require.Equal(t, http.StatusBadRequest, status)

	// Draining a server stops placements there.
	status, body = call(t, "POST", f.admin+"/admin/v1/servers/pg-2/drain", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "draining", body["state"])
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "list-g", "name": "g", "plan": "pro", "server": "pg-2"})
	require.Equal(t, http.StatusConflict, status, body)
	for i := 0; i < 3; i++ {
		status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "auto-" + string(rune('a'+i)), "name": "x", "plan": "pro"})
		require.Equal(t, http.StatusAccepted, status, body)
		require.Equal(t, "pg-1", body["server"], "a draining server takes no new tenants")
	}
}

// An unknown state is a mistake (400 naming the states); an unknown plan or
// server is a name nothing has (an empty page).
func TestListTenantsRefusesAnUnknownState(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	for _, state := range []string{"bogus", "Active", "activ"} {
		status, body := call(t, "GET", b.admin+"/admin/v1/tenants?state="+state, testToken, nil)
		require.Equal(t, http.StatusBadRequest, status, "%s: %v", state, body)
		require.Equal(t, "invalid", errorCode(t, body))
		require.Equal(t, `state "`+state+`" is not a tenant state: use provisioning, active, suspended, deleting, deleted or failed`,
			body["error"].(map[string]any)["message"])
	}
	for _, query := range []string{"state=active", "state=", "plan=no-such-plan", "server=no-such-server"} {
		status, body := call(t, "GET", b.admin+"/admin/v1/tenants?"+query, testToken, nil)
		require.Equal(t, http.StatusOK, status, "%s: %v", query, body)
		require.Empty(t, body["tenants"], query)
	}
}

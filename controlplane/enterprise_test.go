package controlplane

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// issueKey issues a key of slug with the given body and returns the key.
func (f *fleet) issueKey(t testing.TB, slug string, body any) string {
	t.Helper()
	status, key := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, body)
	require.Equal(t, http.StatusCreated, status, key)
	return key["key"].(string)
}

func TestScopedKeys(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	_, all := f.tenantWithKey(t, "scoped", "enterprise", "")

	// Bad specs are refused, naming what is valid; nothing is issued.
	for _, bad := range []map[string]any{
		{"scopes": []string{"users:delete"}},
		{"scopes": []string{"users:read", ""}},
		{"expires_at": time.Now().Add(-time.Minute).Format(time.RFC3339)},
		{"expires_at": "tomorrow"},
		{"scope": []string{"users:read"}},
	} {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants/scoped/keys", testToken, bad)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", bad, body)
		require.Equal(t, "invalid", errorCode(t, body))
	}
	_, body := call(t, "POST", f.admin+"/admin/v1/tenants/scoped/keys", testToken, map[string]any{"scopes": []string{"users:delete"}})
	require.Equal(t, `scope "users:delete" is not a key scope: use users:read, users:write, usage:read, audit:read, *`, body["error"].(map[string]any)["message"])
	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/scoped/keys", testToken, nil)
	require.Len(t, body["keys"].([]any), 1)
	require.Equal(t, []any{"*"}, body["keys"].([]any)[0].(map[string]any)["scopes"], "a key issued without scopes has every one")

	read := f.issueKey(t, "scoped", map[string]any{"scopes": []string{"users:read"}})
	write := f.issueKey(t, "scoped", map[string]any{"scopes": []string{"users:write", "users:write"}})
	usage := f.issueKey(t, "scoped", map[string]any{"scopes": []string{"usage:read"}})
	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/scoped/keys", testToken, nil)
	require.Equal(t, []any{"users:write"}, body["keys"].([]any)[2].(map[string]any)["scopes"], "duplicates are dropped")

	status, user := call(t, "POST", f.api+"/v1/users", all, map[string]any{"email": "ada@example.com"})
	require.Equal(t, http.StatusCreated, status, user)
	users := f.api + "/v1/users"
	one := users + "/" + user["id"].(string)

	// Every route: a key without its scope is refused naming the scope; a
	// key with it, and the * key, are served.
	for _, tc := range []struct {
		method, url, scope string
		body               any
		with               string
		without            []string
	}{
		{"GET", f.api + "/v1/usage", "usage:read", nil, usage, []string{read, write}},
		{"GET", users, "users:read", nil, read, []string{write, usage}},
		{"GET", one, "users:read", nil, read, []string{write, usage}},
		{"POST", users, "users:write", map[string]any{"email": "bob@example.com"}, write, []string{read, usage}},
		{"PATCH", one, "users:write", map[string]any{"name": "Ada"}, write, []string{read, usage}},
		{"DELETE", one, "users:write", nil, write, []string{read, usage}},
	} {
		for _, key := range tc.without {
			status, body := call(t, tc.method, tc.url, key, tc.body)
			require.Equal(t, http.StatusForbidden, status, "%s %s: %v", tc.method, tc.url, body)
			require.Equal(t, "insufficient_scope", errorCode(t, body))
			require.Contains(t, body["error"].(map[string]any)["message"], "lacks scope "+tc.scope)
		}
		status, body := call(t, tc.method, tc.url, tc.with, tc.body)
		require.Less(t, status, 300, "%s %s with %s: %v", tc.method, tc.url, tc.scope, body)
	}
	status, body = call(t, "GET", users, all, nil)
	require.Equal(t, http.StatusOK, status, body)

	// /v1/me answers any key of the tenant, and says what it may do.
	status, body = call(t, "GET", f.api+"/v1/me", usage, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, []any{"usage:read"}, body["scopes"])
	require.Nil(t, body["expires_at"])
}

// TestExpiringKeyStopsOnEveryInstance: a key answers until its expires_at
// and 401 from then on, on a second instance too, with no notification; a
// key issued to replace it works alongside it until then.
func TestExpiringKeyStopsOnEveryInstance(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	env := map[string]string{"TENANTPLANE_SECRET_KEY": secret, "TENANTPLANE_USAGE_FLUSH_INTERVAL": "200ms"}
	f := setupFleet(t, 1, env)
	_, _ = f.tenantWithKey(t, "expiring", "enterprise", "")
	second := setupEnv(t, f.app.cfg.DatabaseURL, env)

	expires := time.Now().Add(3 * time.Second).Truncate(time.Second) // 2 to 3 s away, on a whole second
	old := f.issueKey(t, "expiring", map[string]any{"expires_at": expires.Format(time.RFC3339)})
	replacement := f.issueKey(t, "expiring", map[string]any{"scopes": []string{"users:read"}})
	_, body := call(t, "GET", f.admin+"/admin/v1/tenants/expiring/keys", testToken, nil)
	listed := body["keys"].([]any)[1].(map[string]any)
	require.Equal(t, expires.UTC().Format(time.RFC3339), listed["expires_at"])

	_, unknown := call(t, "GET", f.api+"/v1/me", "tp_no-such-key", nil)
	for _, api := range []string{f.api, second.api} {
		status, body := call(t, "GET", api+"/v1/me", old, nil)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, expires.UTC().Format(time.RFC3339), body["expires_at"])
	}

	// Until the expiry both keys work on both instances (each has the old
	// one cached by now); from it, the old one answers as an unknown key.
	stopped := map[string]time.Duration{}
	for len(stopped) < 2 {
		for _, api := range []string{f.api, second.api} {
			if _, done := stopped[api]; done {
				continue
			}
			status, body := call(t, "GET", api+"/v1/users", old, nil)
			now := time.Now()
			if now.Before(expires.Add(-50 * time.Millisecond)) {
				require.Equal(t, http.StatusOK, status, "before its expiry the key works: %v", body)
			}
			if status == http.StatusUnauthorized {
				require.False(t, now.Before(expires), "401 before the expiry")
				require.Equal(t, unknown, body, "an expired key answers as an unknown one")
				stopped[api] = now.Sub(expires)
			}
			require.Less(t, now.Sub(expires), time.Second, "%s: the key still works a second after its expiry", api)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("expired key refused after %v (first instance) and %v (second)", stopped[f.api], stopped[second.api])
	for _, api := range []string{f.api, second.api} {
		status, body := call(t, "GET", api+"/v1/users", replacement, nil)
		require.Equal(t, http.StatusOK, status, "the replacement outlives the old key: %v", body)
	}
	require.True(t, strings.HasPrefix(replacement, catalog.KeyPrefix))

	// The expiry reaches the tenant's audit trail once, whichever instance's
	// meter records it first.
	expired := func() []catalog.AuditEvent {
		filter := auditFilterFor(t, f, "expiring")
		filter.Action = "key.expired"
		events, err := f.app.store.ListAudit(context.Background(), filter)
		require.NoError(t, err)
		return events
	}
	require.Eventually(t, func() bool { return len(expired()) > 0 }, 10*time.Second, 50*time.Millisecond, "the expiry is recorded")
	time.Sleep(time.Second) // both meters flush a few more times
	events := expired()
	require.Len(t, events, 1, "recorded once")
	require.Equal(t, listed["id"], events[0].Subject)
	require.Equal(t, expires.UTC().Format(time.RFC3339), events[0].Details["expires_at"])
}

// callFrom is call with an X-Forwarded-For header ("" for none).
func callFrom(t testing.TB, url, key, forwardedFor string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	if forwardedFor != "" {
		req.Header.Set("X-Forwarded-For", forwardedFor)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// TestNetworkAllowlist: a tenant with an allowlist is served only from its
// networks, as the socket says unless a trusted proxy forwarded the
// request; a change reaches another instance within a second.
func TestNetworkAllowlist(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_SECRET_KEY": secret})
	_, key := f.tenantWithKey(t, "walled", "enterprise", "")
	_, other := f.tenantWithKey(t, "open", "enterprise", "")
	// The second instance sits behind a proxy on loopback.
	proxied := setupEnv(t, f.app.cfg.DatabaseURL, map[string]string{"TENANTPLANE_SECRET_KEY": secret, "TENANTPLANE_TRUSTED_PROXIES": "127.0.0.1/32, ::1"})
	network := f.admin + "/admin/v1/tenants/walled/network"

	status, body := call(t, "GET", network, testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, []any{}, body["allow"])
	for _, bad := range []any{
		map[string]any{"allow": []string{"10.0.0.0/33"}},
		map[string]any{"allow": []string{"10.1.2.3/8"}},
		map[string]any{"allow": []string{"example.com"}},
		map[string]any{},
	} {
		status, body := call(t, "PUT", network, testToken, bad)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", bad, body)
	}
	status, _ = call(t, "PUT", f.admin+"/admin/v1/tenants/nobody/network", testToken, map[string]any{"allow": []string{}})
	require.Equal(t, http.StatusNotFound, status)

	// Both instances serve (and cache) the tenant before it has a list.
	for _, api := range []string{f.api, proxied.api} {
		status, body := callFrom(t, api+"/v1/me", key, "")
		require.Equal(t, http.StatusOK, status, body)
	}

	status, body = call(t, "PUT", network, testToken, map[string]any{"allow": []string{"10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8"}})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, []any{"10.0.0.0/8", "2001:db8::/32"}, body["allow"])
	start := time.Now()
	require.Eventually(t, func() bool {
		status, _ := callFrom(t, proxied.api+"/v1/me", key, "")
		return status == http.StatusForbidden
	}, time.Second, 10*time.Millisecond, "the allowlist reaches the second instance within a second")
	t.Logf("allowlist applied on the second instance after %v", time.Since(start))
	require.Eventually(t, func() bool {
		status, _ := callFrom(t, f.api+"/v1/me", key, "")
		return status == http.StatusForbidden
	}, time.Second, 10*time.Millisecond, "and the first")

	// Directly from 127.0.0.1: refused, a forged header changes nothing.
	for _, xff := range []string{"", "10.1.2.3"} {
		status, body := callFrom(t, f.api+"/v1/me", key, xff)
		require.Equal(t, http.StatusForbidden, status, "X-Forwarded-For %q: %v", xff, body)
		require.Equal(t, "network_not_allowed", errorCode(t, body))
		require.Contains(t, body["error"].(map[string]any)["message"], "127.0.0.1")
	}
	// Another tenant is not affected.
	status, _ = callFrom(t, f.api+"/v1/me", other, "")
	require.Equal(t, http.StatusOK, status)

	// Through the trusted proxy, the forwarded address decides, read from the right.
	for _, tc := range []struct {
		xff  string
		want int
	}{
		{"10.1.2.3", http.StatusOK},
		{"2001:db8::7", http.StatusOK},
		{"192.0.2.1", http.StatusForbidden},
		{"10.1.2.3, 192.0.2.1", http.StatusForbidden}, // the client forged the left part
		{"192.0.2.1, 10.1.2.3", http.StatusOK},        // the proxy saw 10.1.2.3
		{"10.1.2.3, 127.0.0.1", http.StatusOK},        // through two trusted proxies
		{"", http.StatusForbidden},                    // the proxy itself
		{"garbage", http.StatusForbidden},
	} {
		status, body := callFrom(t, proxied.api+"/v1/users", key, tc.xff)
		require.Equal(t, tc.want, status, "X-Forwarded-For %q: %v", tc.xff, body)
	}

	// Cleared: every network again, on both instances within a second.
	status, body = call(t, "PUT", network, testToken, map[string]any{"allow": []string{}})
	require.Equal(t, http.StatusOK, status, body)
	for _, api := range []string{f.api, proxied.api} {
		require.Eventually(t, func() bool {
			status, _ := callFrom(t, api+"/v1/me", key, "")
			return status == http.StatusOK
		}, time.Second, 10*time.Millisecond)
	}
}

// TestTenantAuditTrail: GET /v1/audit lists exactly the tenant's own events,
// oldest first, in cursor pages, with no secret and nothing of another
// tenant's.
func TestTenantAuditTrail(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	mine, _ := f.tenantWithKey(t, "audited", "enterprise", "")
	theirs, theirKey := f.tenantWithKey(t, "neighbour", "enterprise", "")
	auditor := f.issueKey(t, "audited", map[string]any{"scopes": []string{"audit:read"}, "expires_at": time.Now().Add(time.Hour).Format(time.RFC3339)})
	users := f.issueKey(t, "audited", map[string]any{"scopes": []string{"users:read"}})

	// Things happen to both tenants, interleaved.
	status, created := call(t, "POST", f.admin+"/admin/v1/tenants/audited/keys", testToken, nil)
	require.Equal(t, http.StatusCreated, status)
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/audited/keys/"+created["id"].(string), testToken, nil)
	require.Equal(t, http.StatusNoContent, status)
	status, _ = call(t, "PUT", f.admin+"/admin/v1/tenants/neighbour/network", testToken, map[string]any{"allow": []string{"198.51.100.0/24"}})
	require.Equal(t, http.StatusOK, status)
	status, _ = call(t, "PUT", f.admin+"/admin/v1/tenants/audited/network", testToken, map[string]any{"allow": []string{"127.0.0.0/8"}})
	require.Equal(t, http.StatusOK, status)
	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/audited/suspend", testToken, map[string]any{"reason": "operator note: unpaid, see ticket 4711"})
	require.Equal(t, http.StatusOK, status)
	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/neighbour/suspend", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/audited/resume", testToken, nil)
	require.Equal(t, http.StatusOK, status)

	// The catalog's own record of the tenant, as the admin sees it.
	want, err := f.app.store.ListAudit(t.Context(), catalog.AuditFilter{TenantID: mine["id"].(string), Limit: 1000})
	require.NoError(t, err)
	var wantIDs []any
	var wantActions []string
	for _, ev := range want {
		wantIDs = append(wantIDs, float64(ev.ID))
		wantActions = append(wantActions, ev.Action)
	}
	require.Equal(t, []string{"key.created", "key.created", "key.created", "key.created", "key.revoked", "tenant.network_changed", "tenant.suspended", "tenant.resumed"},
		wantActions[len(wantActions)-8:])

	// Page by page (limit 3), it is exactly that, in order.
	var got []map[string]any
	cursor := ""
	for range 20 {
		status, body := call(t, "GET", f.api+"/v1/audit?limit=3&cursor="+cursor, auditor, nil)
		require.Equal(t, http.StatusOK, status, body)
		for _, ev := range body["events"].([]any) {
			got = append(got, ev.(map[string]any))
		}
		next, _ := body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	var gotIDs []any
	for _, ev := range got {
		gotIDs = append(gotIDs, ev["id"])
		require.NotContains(t, ev, "tenant_id")
		require.NotContains(t, ev, "reason", "an operator's reason is not the tenant's")
		require.NotEmpty(t, ev["actor"])
		require.NotEmpty(t, ev["at"])
		if d, ok := ev["details"].(map[string]any); ok {
			for k := range d {
				require.Contains(t, []string{"scopes", "expires_at", "allow", "plan"}, k, "%v", ev)
			}
		}
	}
	require.Equal(t, wantIDs, gotIDs)
	last := got[len(got)-3]
	require.Equal(t, "tenant.network_changed", last["action"])
	require.Equal(t, map[string]any{"allow": []any{"127.0.0.0/8"}}, last["details"])
	require.Equal(t, "tenant.suspended", got[len(got)-2]["action"])
	require.Equal(t, "admin", got[len(got)-2]["actor"])
	require.Equal(t, "active", got[len(got)-2]["from_state"])
	require.Equal(t, "suspended", got[len(got)-2]["to_state"])

	// No key, no other tenant's subject, no reason anywhere in the answer.
	_, raw, err := try("GET", f.api+"/v1/audit?limit=1000", auditor, "")
	require.NoError(t, err)
	for _, secret := range []string{auditor, users, theirKey, created["key"].(string), theirs["id"].(string), "neighbour", "198.51.100.0/24", "ticket 4711"} {
		require.NotContains(t, raw, secret)
	}

	// Scope: audit:read only.
	status, body := call(t, "GET", f.api+"/v1/audit", users, nil)
	require.Equal(t, http.StatusForbidden, status, body)
	require.Equal(t, "insufficient_scope", errorCode(t, body))
	require.Contains(t, body["error"].(map[string]any)["message"], "audit:read")
	status, body = call(t, "GET", f.api+"/v1/audit?cursor=garbage", auditor, nil)
	require.Equal(t, http.StatusBadRequest, status, body)
}

// callHost is a tenant API GET with a Host header; it returns the status,
// the WWW-Authenticate header and the raw body.
func callHost(t testing.TB, url, host, key string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	req.Host = host
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(raw)
}

// TestHostPerTenant: under TENANTPLANE_TENANT_DOMAIN a tenant's host takes
// only its own keys; another tenant's key there looks unknown; a host that
// names no tenant is 404; other hosts route by key alone.
func TestHostPerTenant(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_TENANT_DOMAIN": "API.Example.test."})
	_, keyA := f.tenantWithKey(t, "host-a", "enterprise", "")
	_, keyB := f.tenantWithKey(t, "host-b", "enterprise", "")
	me := f.api + "/v1/me"

	status, _, body := callHost(t, me, "host-a.api.example.test", keyA)
	require.Equal(t, http.StatusOK, status, body)
	require.Contains(t, body, `"slug":"host-a"`)
	status, _, body = callHost(t, me, "HOST-A.api.example.test:443", keyA)
	require.Equal(t, http.StatusOK, status, body)

	unknownStatus, unknownAuth, unknownBody := callHost(t, me, "host-a.api.example.test", "tp_no-such-key")
	require.Equal(t, http.StatusUnauthorized, unknownStatus)
	status, auth, body := callHost(t, me, "host-a.api.example.test", keyB)
	require.Equal(t, http.StatusUnauthorized, status, body)
	require.Equal(t, unknownBody, body, "another tenant's key answers as an unknown one")
	require.Equal(t, unknownAuth, auth)

	for _, host := range []string{"nobody-here.api.example.test", "a.b.api.example.test"} {
		status, _, body = callHost(t, me, host, keyA)
		require.Equal(t, http.StatusNotFound, status, "%s: %s", host, body)
		require.Contains(t, body, `"code":"not_found"`)
	}
	// A deleted tenant's host is gone too.
	_, keyC := f.tenantWithKey(t, "host-c", "enterprise", "")
	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/host-c", testToken, nil)
	require.Equal(t, http.StatusAccepted, status)
	status, _, body = callHost(t, me, "host-c.api.example.test", keyA)
	require.Equal(t, http.StatusNotFound, status, body)
	_ = keyC

	// Other hosts (the domain itself, an address, another name) route by key alone.
	for _, host := range []string{"api.example.test", "127.0.0.1", "tenantplane.internal"} {
		for _, key := range []string{keyA, keyB} {
			status, _, body := callHost(t, me, host, key)
			require.Equal(t, http.StatusOK, status, "%s: %s", host, body)
		}
	}
}

// TestCustomHostnames: a custom hostname takes only its tenant's keys, is
// unique across tenants, and a change applies at once.
func TestCustomHostnames(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_TENANT_DOMAIN": "api.example.test"})
	_, keyA := f.tenantWithKey(t, "custom-a", "enterprise", "")
	_, keyB := f.tenantWithKey(t, "custom-b", "enterprise", "")
	hostnames := f.admin + "/admin/v1/tenants/custom-a/hostnames"
	me := f.api + "/v1/me"

	// Before: the name routes by key alone.
	status, _, body := callHost(t, me, "api.acme.test", keyB)
	require.Equal(t, http.StatusOK, status, body)

	status, added := call(t, "POST", hostnames, testToken, map[string]any{"hostname": "API.Acme.test."})
	require.Equal(t, http.StatusCreated, status, added)
	require.Equal(t, "api.acme.test", added["hostname"])
	status, body2 := call(t, "POST", f.admin+"/admin/v1/tenants/custom-b/hostnames", testToken, map[string]any{"hostname": "api.acme.test"})
	require.Equal(t, http.StatusConflict, status, body2)
	for _, bad := range []string{"https://api.acme.test", "api.acme.test:443", "*.acme.test", "localhost", "10.0.0.1", "custom-b.api.example.test"} {
		status, body := call(t, "POST", hostnames, testToken, map[string]any{"hostname": bad})
		require.Equal(t, http.StatusBadRequest, status, "%s: %v", bad, body)
	}
	_, list := call(t, "GET", hostnames, testToken, nil)
	require.Len(t, list["hostnames"], 1)

	require.Eventually(t, func() bool {
		status, _, _ := callHost(t, me, "api.acme.test", keyB)
		return status == http.StatusUnauthorized
	}, time.Second, 10*time.Millisecond, "the hostname takes only its tenant's keys within a second")
	_, _, unknown := callHost(t, me, "api.acme.test", "tp_no-such-key")
	status, _, body = callHost(t, me, "api.acme.test:8443", keyB)
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, unknown, body, "another tenant's key answers as an unknown one")
	status, _, body = callHost(t, me, "api.acme.test", keyA)
	require.Equal(t, http.StatusOK, status, body)

	status, _ = call(t, "DELETE", hostnames+"/api.acme.test", testToken, nil)
	require.Equal(t, http.StatusNoContent, status)
	status, _ = call(t, "DELETE", hostnames+"/api.acme.test", testToken, nil)
	require.Equal(t, http.StatusNotFound, status)
	require.Eventually(t, func() bool {
		status, _, _ := callHost(t, me, "api.acme.test", keyB)
		return status == http.StatusOK
	}, time.Second, 10*time.Millisecond, "a removed hostname routes by key alone again")
}

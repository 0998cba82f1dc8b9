package controlplane

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMalformedIDsAreNotFoundOnEveryRoute: an id that cannot exist (not a
// number, not a UUID, not a name) answers what an id that does not exist
// answers, 404 not_found, on every route of both APIs with an id in its path.
// So does a plan that does not exist in a path.
func TestMalformedIDsAreNotFoundOnEveryRoute(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	_, key := f.tenantWithKey(t, "ids", "basic", "")

	v1 := f.admin + "/admin/v1"
	for _, tc := range []struct {
		method, url, token string
	}{
		{"GET", v1 + "/migrations/runs/x", testToken},
		{"GET", v1 + "/migrations/runs/0", testToken},
		{"GET", v1 + "/migrations/runs/-3", testToken},
		{"GET", v1 + "/migrations/runs/99999999999999999999", testToken},
		{"GET", v1 + "/migrations/runs/x/tenants", testToken},
		{"POST", v1 + "/migrations/runs/x/pause", testToken},
		{"POST", v1 + "/migrations/runs/x/resume", testToken},
		{"POST", v1 + "/migrations/runs/x/cancel", testToken},
		{"GET", v1 + "/migrations/runs/42", testToken},
		{"GET", v1 + "/billing/runs/x", testToken},
		{"GET", v1 + "/billing/runs/0", testToken},
		{"GET", v1 + "/billing/runs/42", testToken},
		{"DELETE", v1 + "/tenants/ids/keys/not-a-uuid", testToken},
		{"DELETE", v1 + "/tenants/ids/keys/00000000-0000-0000-0000-000000000000", testToken},
		{"GET", v1 + "/tenants/Not_A_Slug", testToken},
		{"GET", v1 + "/tenants/Not_A_Slug/keys", testToken},
		{"POST", v1 + "/servers/Not_A_Name/drain", testToken},
		{"POST", v1 + "/plans/platinum/versions", testToken},
		{"GET", f.api + "/v1/users/x", key},
		{"PATCH", f.api + "/v1/users/x", key},
		{"DELETE", f.api + "/v1/users/x", key},
		{"GET", f.api + "/v1/users/00000000-0000-0000-0000-000000000000", key},
	} {
		var body any
		switch {
		case tc.method == "PATCH":
			body = map[string]any{"name": "x"}
		case tc.url == v1+"/plans/platinum/versions":
			body = map[string]any{"currency": "usd", "base_fee": 100}
		}
		status, resp := call(t, tc.method, tc.url, tc.token, body)
		require.Equal(t, http.StatusNotFound, status, "%s %s: %v", tc.method, tc.url, resp)
		require.Equal(t, "not_found", errorCode(t, resp), "%s %s", tc.method, tc.url)
	}
}

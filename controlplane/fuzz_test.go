package controlplane

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzAPIInputs sends arbitrary bodies and paths to the tenant and admin
// APIs: whatever comes in, the answer is never a 5xx, and is JSON.
//
//	go test -run '^$' -fuzz FuzzAPIInputs -fuzztime 60s ./controlplane
func FuzzAPIInputs(f *testing.F) {
	for _, seed := range []struct{ path, body string }{
		{"/v1/users", `{"email": "a@b.c", "name": "x"}`},
		{"/v1/users", `{"email": null}`},
		{"/v1/users", `{"email": "` + strings.Repeat("a", 400) + `@b.c"}`},
		{"/v1/users", `{"email": "x@y.z", "name": "\u0000"}`},
		{"/v1/users", `[1, 2, 3]`},
		{"/v1/users?limit=-1", ``},
		{"/v1/users?cursor=%ff%fe", ``},
		{"/v1/users/00000000-0000-0000-0000-000000000000", `{"name": "n"}`},
		{"/v1/users/'; DROP TABLE users; --", `{}`},
		{"/admin/v1/tenants", `{"slug": "fuzz-ok", "name": "n", "plan": "basic"}`},
		{"/admin/v1/tenants", `{"slug": "x\"; drop database postgres; --", "plan": "pro"}`},
		{"/admin/v1/tenants", `{"slug": 42}`},
		{"/admin/v1/tenants?wait=maybe", `{}`},
		{"/admin/v1/servers", `{"name": "n", "dsn": "postgres://%zz"}`},
		{"/admin/v1/tenants?cursor=AAAA&limit=99999", ``},
		{"/admin/v1/tenants/fuzz-ok/keys/not-a-uuid", ``},
	} {
		f.Add(seed.path, seed.body)
	}
	// One running App with a tenant and its key serves every input.
	fl := setupFleet(f, 1, nil)
	_, key := fl.tenantWithKey(f, "fuzz-tenant", "enterprise", "")
	f.Fuzz(func(t *testing.T, path, body string) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		base, token := fl.api, key
		if strings.HasPrefix(path, "/admin/") {
			base, token = fl.admin, testToken
		}
		for _, method := range []string{"POST", "PATCH", "GET", "DELETE"} {
			req, err := http.NewRequest(method, base+path, strings.NewReader(body))
			if err != nil {
				return // not a URL an HTTP client can send
			}
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				t.Fatalf("%s %s with body %q: %d", method, path, body, resp.StatusCode)
			}
			if resp.StatusCode != http.StatusNoContent && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("%s %s: %d answered %q, not JSON", method, path, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
		}
	})
}

package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// recordedTenants is a GET /tenants answer as the contract describes it.
const recordedTenants = `{
  "tenants": [
    {"id": 1, "slug": "acme", "name": "Acme Inc", "plan": "pro", "state": "active", "server": "pg-1",
     "database": "tenant_acme", "schema_version": 3, "schema_dirty": false, "last_error": "",
     "delete_after": null, "created_at": "2026-03-01T10:00:00.123456Z", "updated_at": "2026-03-01T10:00:01Z"},
    {"id": "7f1c", "slug": "globex", "name": "Globex", "plan": "free", "state": "provisioning", "server": null,
     "database": "", "schema_version": null, "schema_dirty": false, "last_error": null,
     "delete_after": null, "created_at": "2026-03-02T11:30:00+02:00", "updated_at": null}
  ],
  "next_cursor": "abc"
}`

func decodeTenants(t *testing.T, raw string) []Tenant {
	t.Helper()
	var page struct {
		Tenants []Tenant `json:"tenants"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &page))
	return page.Tenants
}

func TestWriteTenants(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	require.NoError(t, writeTenants(&buf, decodeTenants(t, recordedTenants)))
	require.Equal(t, ""+
		"SLUG    STATE         PLAN  SERVER  SCHEMA  CREATED\n"+
		"acme    active        pro   pg-1    3       2026-03-01T10:00:00Z\n"+
		"globex  provisioning  free  -       -       2026-03-02T09:30:00Z\n",
		buf.String())
}

func TestWriteTenantsShowsLastErrorWhenAny(t *testing.T) {
	t.Parallel()
	tenants := decodeTenants(t, `{"tenants": [
		{"slug": "acme", "plan": "pro", "state": "active", "server": "pg-1", "schema_version": 3, "created_at": "2026-03-01T10:00:00Z"},
		{"slug": "initech", "plan": "pro", "state": "failed", "server": "pg-2", "schema_version": 2, "schema_dirty": true,
		 "last_error": "migration 3:\tcolumn \"x\" already exists\nat line 1", "created_at": "2026-03-01T10:00:00Z"}
	]}`)
	var buf bytes.Buffer
	require.NoError(t, writeTenants(&buf, tenants))
	require.Equal(t, ""+
		"SLUG     STATE   PLAN  SERVER  SCHEMA     CREATED               LAST_ERROR\n"+
		"acme     active  pro   pg-1    3          2026-03-01T10:00:00Z  -\n"+
		"initech  failed  pro   pg-2    2 (dirty)  2026-03-01T10:00:00Z  migration 3: column \"x\" already exists at line 1\n",
		buf.String())

	long := strings.Repeat("x", 200)
	buf.Reset()
	require.NoError(t, writeTenants(&buf, []Tenant{{Slug: "a", State: "failed", LastError: long}}))
	require.Contains(t, buf.String(), strings.Repeat("x", 77)+"...\n")
	require.NotContains(t, buf.String(), strings.Repeat("x", 78))

	buf.Reset()
	require.NoError(t, writeTenants(&buf, nil))
	require.Equal(t, "No tenants.\n", buf.String())
}

func TestWriteTenantDetail(t *testing.T) {
	t.Parallel()
	tn := decodeTenants(t, `{"tenants": [{"id": 42, "slug": "acme", "name": "Acme Inc", "plan": "pro", "state": "deleting",
		"server": "pg-1", "database": "tenant_acme", "schema_version": 3, "schema_dirty": false, "last_error": "",
		"delete_after": "2026-04-01T00:00:00Z", "created_at": "2026-03-01T10:00:00Z", "updated_at": "2026-03-02T10:00:00Z"}]}`)[0]
	var buf bytes.Buffer
	require.NoError(t, writeTenant(&buf, tn))
	require.Equal(t, ""+
		"SLUG:          acme\n"+
		"NAME:          Acme Inc\n"+
		"ID:            42\n"+
		"STATE:         deleting\n"+
		"PLAN:          pro\n"+
		"SERVER:        pg-1\n"+
		"DATABASE:      tenant_acme\n"+
		"SCHEMA:        3\n"+
		"DELETE_AFTER:  2026-04-01T00:00:00Z\n"+
		"CREATED:       2026-03-01T10:00:00Z\n"+
		"UPDATED:       2026-03-02T10:00:00Z\n",
		buf.String())

	buf.Reset()
	require.NoError(t, writeTenantDeleted(&buf, tn))
	require.Equal(t, "Tenant acme is deleting; its database is dropped after 2026-04-01T00:00:00Z. "+
		"Until then, undo with: tenantplane tenants restore acme\n", buf.String())

	buf.Reset()
	tn.State, tn.Database, tn.SchemaVersion, tn.DeleteAfter = "provisioning", "", nil, apiTime{}
	require.NoError(t, writeTenantCreated(&buf, tn))
	out := buf.String()
	require.True(t, strings.HasPrefix(out, "Tenant acme is provisioning; follow it with: tenantplane tenants show acme\n\nSLUG:"), out)
	require.Contains(t, out, "DATABASE:  -\n")
	require.Contains(t, out, "SCHEMA:    -\n")
	require.NotContains(t, out, "DELETE_AFTER")

	buf.Reset()
	tn.State = "active"
	require.NoError(t, writeTenantCreated(&buf, tn))
	require.True(t, strings.HasPrefix(buf.String(), "Tenant acme is active.\n\n"), buf.String())
}

func TestTenantsFlagErrors(t *testing.T) {
	t.Parallel()
	url := closedURL(t) // nothing may be called: every mistake is caught first
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenants", "create", "acme"}, `required flag(s) "name", "plan" not set`},
		{[]string{"tenants", "create", "acme", "--name", "Acme"}, `required flag(s) "plan" not set`},
		{[]string{"tenants", "create", "--name", "Acme", "--plan", "pro"}, "accepts 1 arg(s), received 0"},
		{[]string{"tenants", "create", "a", "b", "--name", "Acme", "--plan", "pro"}, "accepts 1 arg(s), received 2"},
		{[]string{"tenants", "list", "--limit", "-1"}, "--limit must not be negative"},
		{[]string{"tenants", "list", "--limit", "ten"}, `invalid argument "ten" for "--limit"`},
		{[]string{"tenants", "list", "extra"}, `unknown command "extra"`},
		{[]string{"tenants", "show"}, "accepts 1 arg(s), received 0"},
		{[]string{"tenants", "suspend"}, "accepts 1 arg(s), received 0"},
		{[]string{"tenants", "resume", "acme", "--force"}, "unknown flag: --force"},
		{[]string{"tenants", "delete"}, "accepts 1 arg(s), received 0"},
		{[]string{"tenants", "create", "acme", "--name", "A", "--plan", "p", "--timeout", "soon"}, `invalid argument "soon" for "--timeout"`},
	} {
		_, _, err := runCLI(t, "", append(tc.args, "--admin-url", url, "--token", testToken)...)
		require.Error(t, err, tc.args)
		require.Contains(t, err.Error(), tc.want, tc.args)
		require.NotContains(t, err.Error(), "unreachable", tc.args)
	}
}

func TestTenantsAgainstAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)

	// An unknown tenant is a 404 whether or not the endpoint exists yet.
	_, _, err := b.run(t, "tenants", "show", "nosuch")
	requireAPIError(t, err, 404, "not_found")
	require.Contains(t, err.Error(), "(not_found, HTTP 404)")

	dsn, _ := serverDSN(t)
	_, _, err = b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)

	stdout, stderr, err := b.run(t, "tenants", "create", "acme", "--name", "Acme Inc", "--plan", "pro", "--wait")
	require.NoError(t, err, stderr)
	require.True(t, strings.HasPrefix(stdout, "Tenant acme is active.\n"), stdout)
	require.Regexp(t, `(?m)^SERVER: +pg-1$`, stdout)

	stdout, _, err = b.run(t, "tenants", "create", "globex", "--name", "Globex", "--plan", "pro", "--wait", "--json")
	require.NoError(t, err)
	var created map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &created))
	require.Equal(t, "globex", created["slug"])
	require.Equal(t, "active", created["state"])

	// --all follows the cursors to the end, a tenant a page here.
	stdout, stderr, err = b.run(t, "tenants", "list", "--limit", "1", "--all")
	require.NoError(t, err, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	require.Equal(t, "SLUG", strings.Fields(lines[0])[0])
	require.Empty(t, stderr)

	stdout, stderr, err = b.run(t, "tenants", "list", "--limit", "1")
	require.NoError(t, err)
	require.Len(t, strings.Split(strings.TrimSpace(stdout), "\n"), 2, stdout)
	require.Contains(t, stderr, "More tenants follow: add --cursor ")

	stdout, _, err = b.run(t, "tenants", "list", "--limit", "1", "--all", "--json")
	require.NoError(t, err)
	var all struct {
		Tenants []map[string]any `json:"tenants"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &all))
	require.Len(t, all.Tenants, 2)

	stdout, _, err = b.run(t, "tenants", "list", "--state", "suspended")
	require.NoError(t, err)
	require.Equal(t, "No tenants.\n", stdout)

	stdout, _, err = b.run(t, "tenants", "suspend", "acme", "--reason", "unpaid")
	require.NoError(t, err)
	require.Equal(t, "Suspended tenant acme; it is now suspended.\n", stdout)
	stdout, _, err = b.run(t, "tenants", "resume", "acme")
	require.NoError(t, err)
	require.Equal(t, "Resumed tenant acme; it is now active.\n", stdout)
	stdout, _, err = b.run(t, "tenants", "rotate-credentials", "acme", "--reason", "yearly")
	require.NoError(t, err)
	require.Equal(t, "Rotated the database credentials of tenant acme; it is now active.\n", stdout)

	stdout, _, err = b.run(t, "tenants", "delete", "globex")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(stdout, "Tenant globex is deleting; its database is dropped after "), stdout)
	stdout, _, err = b.run(t, "tenants", "restore", "globex")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(stdout, "Restored tenant globex; it is now "), stdout)

	// Without --wait the answer comes at once, usually while provisioning.
	stdout, _, err = b.run(t, "tenants", "create", "initech", "--name", "Initech", "--plan", "pro", "--server", "pg-1")
	require.NoError(t, err)
	require.Regexp(t, `^Tenant initech is (provisioning; follow it with: tenantplane tenants show initech|active\.)\n\nSLUG: +initech\n`, stdout)
	_, _, err = b.run(t, "tenants", "create", "hooli", "--name", "Hooli", "--plan", "pro", "--server", "nosuch")
	require.Error(t, err)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	require.GreaterOrEqual(t, apiErr.Status, 400)
	require.Less(t, apiErr.Status, 500)

	stdout, _, err = b.run(t, "tenants", "show", "acme")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^STATE: +active$`, stdout)
	require.Regexp(t, `(?m)^DATABASE: +\S+$`, stdout)

	stdout, _, err = b.run(t, "tenants", "show", "acme", "--json")
	require.NoError(t, err)
	var shown map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &shown))
	require.Equal(t, "acme", shown["slug"])
	require.Equal(t, "active", shown["state"])
}

package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWriteKeys(t *testing.T) {
	t.Parallel()
	var page struct {
		Keys []APIKey `json:"keys"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{"keys": [
		{"id": 12, "prefix": "tp_8f3a", "created_at": "2026-03-01T10:00:00.5Z", "last_used_at": "2026-03-03T08:15:00Z", "revoked_at": null, "scopes": ["*"], "expires_at": null},
		{"id": "k-13", "prefix": "tp_91bc", "created_at": "2026-03-02T10:00:00+01:00", "last_used_at": null, "revoked_at": "2026-03-04T00:00:00Z", "scopes": ["users:read", "usage:read"], "expires_at": "2026-04-01T00:00:00Z"}
	]}`), &page))
	var buf bytes.Buffer
	require.NoError(t, writeKeys(&buf, page.Keys))
	require.Equal(t, ""+
		"ID    PREFIX   SCOPES                 CREATED               EXPIRES               LAST_USED             REVOKED\n"+
		"12    tp_8f3a  *                      2026-03-01T10:00:00Z  -                     2026-03-03T08:15:00Z  -\n"+
		"k-13  tp_91bc  users:read,usage:read  2026-03-02T09:00:00Z  2026-04-01T00:00:00Z  -                     2026-03-04T00:00:00Z\n",
		buf.String())

	buf.Reset()
	require.NoError(t, writeKeys(&buf, nil))
	require.Equal(t, "No API keys.\n", buf.String())
}

func TestWriteCreatedKey(t *testing.T) {
	t.Parallel()
	var k CreatedKey
	require.NoError(t, json.Unmarshal([]byte(`{"id": 12, "key": "tp_8f3a.s3cr3tk3y", "prefix": "tp_8f3a", "created_at": "2026-03-01T10:00:00Z", "scopes": ["*"], "expires_at": null}`), &k))
	var buf bytes.Buffer
	require.NoError(t, writeCreatedKey(&buf, "acme", k))
	require.Equal(t, ""+
		"Created API key 12 (prefix tp_8f3a) for tenant acme, scopes *, never expires.\n"+
		"The key is shown only this once; store it now:\n"+
		"\n"+
		"tp_8f3a.s3cr3tk3y\n",
		buf.String())
}

func TestKeysFlagErrors(t *testing.T) {
	t.Parallel()
	url := closedURL(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "create"}, "accepts 1 arg(s), received 0"},
		{[]string{"keys", "list"}, "accepts 1 arg(s), received 0"},
		{[]string{"keys", "revoke", "acme"}, "accepts 2 arg(s), received 1"},
		{[]string{"keys", "revoke", "acme", "1", "2"}, "accepts 2 arg(s), received 3"},
		{[]string{"keys", "create", "acme", "--expires", "soon"}, `invalid argument "soon" for "--expires"`},
		{[]string{"keys", "create", "acme", "--expires", "-1h"}, "--expires -1h0m0s is not a positive duration"},
	} {
		_, _, err := runCLI(t, "", append(tc.args, "--admin-url", url, "--token", testToken)...)
		require.Error(t, err, tc.args)
		require.Contains(t, err.Error(), tc.want, tc.args)
	}
}

func TestKeysAgainstAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)

	_, _, err := b.run(t, "keys", "list", "nosuch")
	requireAPIError(t, err, 404, "not_found")

	dsn, _ := serverDSN(t)
	_, _, err = b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)
	_, _, err = b.run(t, "tenants", "create", "acme", "--name", "Acme Inc", "--plan", "pro", "--wait")
	require.NoError(t, err)

	stdout, _, err := b.run(t, "keys", "create", "acme")
	require.NoError(t, err)
	require.Contains(t, stdout, "The key is shown only this once")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	key := lines[len(lines)-1]
	require.NotEmpty(t, key)

	stdout, _, err = b.run(t, "keys", "create", "acme", "--json")
	require.NoError(t, err)
	var created map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &created))
	require.NotEmpty(t, created["key"])
	id, err := json.Marshal(created["id"])
	require.NoError(t, err)
	keyID := strings.Trim(string(id), `"`)

	stdout, _, err = b.run(t, "keys", "list", "acme")
	require.NoError(t, err)
	require.NotContains(t, stdout, key, "a listed key never shows the secret")
	lines = strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	require.Equal(t, []string{"ID", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST_USED", "REVOKED"}, strings.Fields(lines[0]))

	// Scoped and expiring: the list shows both.
	stdout, _, err = b.run(t, "keys", "create", "acme", "--scope", "users:read", "--scope", "usage:read", "--expires", "720h")
	require.NoError(t, err)
	require.Contains(t, stdout, "scopes users:read,usage:read, expires "+time.Now().Add(720*time.Hour).UTC().Format("2006-01-02T"))
	_, _, err = b.run(t, "keys", "create", "acme", "--scope", "users:delete")
	requireAPIError(t, err, 400, "invalid")
	require.Contains(t, err.Error(), "use users:read, users:write, usage:read, audit:read, *")
	stdout, _, err = b.run(t, "keys", "list", "acme")
	require.NoError(t, err)
	lines = strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 4, stdout)
	scoped := strings.Fields(lines[3])
	require.Equal(t, "users:read,usage:read", scoped[2])
	require.Equal(t, time.Now().Add(720*time.Hour).UTC().Format("2006-01-02"), scoped[4][:10])

	stdout, _, err = b.run(t, "keys", "revoke", "acme", keyID)
	require.NoError(t, err)
	require.Equal(t, "Revoked API key "+keyID+" of tenant acme.\n", stdout)

	stdout, _, err = b.run(t, "keys", "list", "acme", "--json")
	require.NoError(t, err)
	var page struct {
		Keys []map[string]any `json:"keys"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &page))
	require.Len(t, page.Keys, 3)
	revoked := 0
	for _, k := range page.Keys {
		require.NotContains(t, k, "key")
		if k["revoked_at"] != nil {
			revoked++
		}
	}
	require.Equal(t, 1, revoked)
}

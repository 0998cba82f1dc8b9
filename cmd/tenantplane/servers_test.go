package main

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// serverDSN is a DSN of the shared test server as its managed (CREATEDB
// CREATEROLE) role, and its password as it would appear in a DSN
// (":password@"; the password alone may be a word that shows up anyway).
func serverDSN(t *testing.T) (dsn, password string) {
	t.Helper()
	dsn = pgtest.Shared(t).ManagedDSN(t, "postgres")
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	password, ok := u.User.Password()
	require.True(t, ok, "the test DSN has a password")
	require.NotEmpty(t, password)
	return dsn, ":" + password + "@"
}

func TestServersAddAndList(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, password := serverDSN(t)

	stdout, stderr, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn, "--capacity", "5", "--conn-budget", "7")
	require.NoError(t, err, stderr)
	require.NotContains(t, stdout, password)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 2, stdout)
	require.Equal(t, []string{"NAME", "STATE", "TENANTS/CAPACITY", "CONN_BUDGET", "DSN"}, strings.Fields(lines[0]))
	row := strings.Fields(lines[1])
	require.Equal(t, []string{"pg-1", "active", "0/5", "7"}, row[:4])
	require.True(t, strings.HasPrefix(row[4], "postgres://"+pgtest.ManagedRole+"@"), row[4])
	require.True(t, strings.HasSuffix(row[4], "/postgres"), row[4])

	// The API's defaults apply when the flags are left out; the DSN can come on stdin.
	stdout, stderr, err = runCLI(t, dsn+"\n", "servers", "add", "pg-2", "--dsn", "-", "--admin-url", b.adminURL, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Contains(t, stdout, "0/100")
	require.NotContains(t, stdout, password)

	stdout, _, err = b.run(t, "servers", "list")
	require.NoError(t, err)
	require.NotContains(t, stdout, password)
	lines = strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	require.Equal(t, "NAME", strings.Fields(lines[0])[0])
	require.Equal(t, []string{"pg-1", "active", "0/5", "7"}, strings.Fields(lines[1])[:4])
	require.Equal(t, "pg-2", strings.Fields(lines[2])[0])
	// Columns line up: every row's DSN starts where the header's does.
	col := strings.Index(lines[0], "DSN")
	for _, l := range lines[1:] {
		require.Equal(t, "postgres://", l[col:col+len("postgres://")], l)
	}

	stdout, _, err = b.run(t, "servers", "list", "--json")
	require.NoError(t, err)
	require.NotContains(t, stdout, password)
	require.Contains(t, stdout, "\n  \"servers\": [", "pretty-printed")
	var page struct {
		Servers []map[string]any `json:"servers"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &page))
	require.Len(t, page.Servers, 2)
	require.Equal(t, "pg-1", page.Servers[0]["name"])
	require.EqualValues(t, 5, page.Servers[0]["capacity"])
	require.EqualValues(t, 7, page.Servers[0]["conn_budget"])
	require.Equal(t, "active", page.Servers[0]["state"])
	require.Contains(t, page.Servers[0], "created_at")

	stdout, _, err = b.run(t, "servers", "add", "pg-3", "--dsn", dsn, "--json")
	require.NoError(t, err)
	require.NotContains(t, stdout, password)
	var srv map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &srv))
	require.Equal(t, "pg-3", srv["name"])
}

func TestServersAddErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, password := serverDSN(t)

	_, _, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)

	_, _, err = b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.Error(t, err)
	requireAPIError(t, err, 409, "conflict")
	require.Equal(t, `server "pg-1" already exists (conflict, HTTP 409)`, err.Error())

	_, _, err = b.run(t, "servers", "add", "pg-2", "--dsn", "host=127.0.0.1 port=notaport")
	requireAPIError(t, err, 400, "invalid")
	require.Equal(t, "dsn is not a valid PostgreSQL connection string (invalid, HTTP 400)", err.Error())

	// A server that does not answer: the message names it, without the password.
	_, _, err = b.run(t, "servers", "add", "pg-2", "--dsn", "postgres://admin:s3cret-pw@127.0.0.1:1/postgres?connect_timeout=2")
	requireAPIError(t, err, 400, "invalid")
	require.Contains(t, err.Error(), "cannot connect to the server at postgres://admin@127.0.0.1:1/postgres")
	require.NotContains(t, err.Error(), "s3cret-pw")

	_, _, err = b.run(t, "servers", "add", "Bad_Name", "--dsn", dsn)
	requireAPIError(t, err, 400, "invalid")
	require.Contains(t, err.Error(), "lowercase letters")

	_, _, err = b.run(t, "servers", "add", "pg-2", "--dsn", dsn, "--capacity", "-1")
	requireAPIError(t, err, 400, "invalid")

	// Flag and argument mistakes are caught before any call.
	_, _, err = b.run(t, "servers", "add", "pg-2")
	require.ErrorContains(t, err, `required flag(s) "dsn" not set`)
	_, _, err = b.run(t, "servers", "add", "--dsn", dsn)
	require.ErrorContains(t, err, "accepts 1 arg(s), received 0")
	_, _, err = b.run(t, "servers", "add", "pg-2", "--dsn", dsn, "--capacity", "many")
	require.ErrorContains(t, err, `invalid argument "many" for "--capacity"`)
	_, _, err = runCLI(t, "", "servers", "add", "pg-2", "--dsn", "-", "--admin-url", b.adminURL, "--token", testToken)
	require.ErrorContains(t, err, "no DSN on standard input")

	// Nothing above was stored but pg-1.
	stdout, _, err := b.run(t, "servers", "list")
	require.NoError(t, err)
	require.Len(t, strings.Split(strings.TrimSpace(stdout), "\n"), 2, stdout)
	require.NotContains(t, stdout, password)
}

func TestServersDrain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, _ := serverDSN(t)
	_, _, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)

	stdout, _, err := b.run(t, "servers", "drain", "pg-1")
	require.NoError(t, err)
	require.Equal(t, "Server pg-1 is draining: it keeps its 0 tenants and takes no new ones.\n", stdout)

	stdout, _, err = b.run(t, "servers", "list")
	require.NoError(t, err)
	require.Equal(t, []string{"pg-1", "draining"}, strings.Fields(strings.Split(stdout, "\n")[1])[:2])

	_, _, err = b.run(t, "servers", "drain", "nosuch")
	requireAPIError(t, err, 404, "not_found")

	stdout, _, err = b.run(t, "servers", "activate", "pg-1")
	require.NoError(t, err)
	require.Equal(t, "Server pg-1 is active: it takes new tenants (0 of 100 places used).\n", stdout)
	stdout, _, err = b.run(t, "servers", "list")
	require.NoError(t, err)
	require.Equal(t, []string{"pg-1", "active"}, strings.Fields(strings.Split(stdout, "\n")[1])[:2])
	_, _, err = b.run(t, "servers", "activate", "nosuch")
	requireAPIError(t, err, 404, "not_found")
}

// requireAPIError checks err is an error answer of the admin API.
func requireAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	require.Error(t, err)
	var e *APIError
	require.True(t, errors.As(err, &e), "not an *APIError: %v", err)
	require.Equal(t, status, e.Status, err.Error())
	require.Equal(t, code, e.Code, err.Error())
	require.NotEmpty(t, e.Message)
}

func TestServersSet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, _ := serverDSN(t)
	_, stderr, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn, "--capacity", "5", "--conn-budget", "7")
	require.NoError(t, err, stderr)

	stdout, stderr, err := b.run(t, "servers", "set", "pg-1", "--conn-budget", "12")
	require.NoError(t, err, stderr)
	require.Equal(t, []string{"pg-1", "active", "0/5", "12"}, strings.Fields(strings.Split(strings.TrimSpace(stdout), "\n")[1])[:4])
	stdout, _, err = b.run(t, "servers", "set", "pg-1", "--capacity", "9", "--json")
	require.NoError(t, err)
	var srv map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &srv))
	require.EqualValues(t, 9, srv["capacity"])
	require.EqualValues(t, 12, srv["conn_budget"], "a field left out stays")

	_, _, err = b.run(t, "servers", "set", "pg-1")
	require.ErrorContains(t, err, "nothing to change")
	_, _, err = b.run(t, "servers", "set", "pg-1", "--conn-budget", "0")
	requireAPIError(t, err, 400, "invalid")
	_, _, err = b.run(t, "servers", "set", "pg-9", "--capacity", "3")
	requireAPIError(t, err, 404, "not_found")
}

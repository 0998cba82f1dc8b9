package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTenantsNetworkAgainstAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, _, err := b.run(t, "tenants", "network", "nosuch")
	requireAPIError(t, err, 404, "not_found")

	dsn, _ := serverDSN(t)
	_, _, err = b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)
	_, _, err = b.run(t, "tenants", "create", "acme", "--name", "Acme Inc", "--plan", "pro", "--wait")
	require.NoError(t, err)

	stdout, _, err := b.run(t, "tenants", "network", "acme")
	require.NoError(t, err)
	require.Equal(t, "Tenant acme accepts calls from any network.\n", stdout)

	stdout, _, err = b.run(t, "tenants", "network", "acme", "--allow", "203.0.113.0/24", "--allow", "2001:db8::/32,10.0.0.0/8")
	require.NoError(t, err)
	require.Equal(t, "Tenant acme accepts calls only from:\n  203.0.113.0/24\n  2001:db8::/32\n  10.0.0.0/8\n", stdout)
	stdout, _, err = b.run(t, "tenants", "network", "acme", "--json")
	require.NoError(t, err)
	require.JSONEq(t, `{"allow": ["203.0.113.0/24", "2001:db8::/32", "10.0.0.0/8"]}`, stdout)

	_, _, err = b.run(t, "tenants", "network", "acme", "--allow", "203.0.113.5/24")
	requireAPIError(t, err, 400, "invalid")
	require.Contains(t, err.Error(), "write 203.0.113.0/24")
	_, _, err = b.run(t, "tenants", "network", "acme", "--allow", "10.0.0.0/8", "--clear")
	require.ErrorContains(t, err, "--clear and --allow together")

	stdout, _, err = b.run(t, "tenants", "network", "acme", "--clear")
	require.NoError(t, err)
	require.Equal(t, "Tenant acme accepts calls from any network.\n", stdout)
}

func TestTenantsHostnamesAgainstAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, _ := serverDSN(t)
	_, _, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)
	_, _, err = b.run(t, "tenants", "create", "acme", "--name", "Acme Inc", "--plan", "pro", "--wait")
	require.NoError(t, err)

	stdout, _, err := b.run(t, "tenants", "hostnames", "acme")
	require.NoError(t, err)
	require.Equal(t, "Tenant acme has no custom hostnames.\n", stdout)
	stdout, _, err = b.run(t, "tenants", "hostnames", "acme", "--add", "API.acme.example")
	require.NoError(t, err)
	require.Equal(t, "Tenant acme is served at api.acme.example.\n", stdout)
	stdout, _, err = b.run(t, "tenants", "hostnames", "acme")
	require.NoError(t, err)
	require.Contains(t, stdout, "api.acme.example")
	_, _, err = b.run(t, "tenants", "hostnames", "acme", "--add", "api.acme.example:443")
	requireAPIError(t, err, 400, "invalid")
	stdout, _, err = b.run(t, "tenants", "hostnames", "acme", "--remove", "api.acme.example")
	require.NoError(t, err)
	require.Equal(t, "Removed hostname api.acme.example of tenant acme.\n", stdout)
	_, _, err = b.run(t, "tenants", "hostnames", "acme", "--remove", "api.acme.example")
	requireAPIError(t, err, 404, "not_found")
}

package provisioner

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// Both ways a tenant gets its role, the template path and a warm claim,
// give the server a cheap SCRAM verifier instead of the password, and the
// tenant logs in with the password the catalog holds.
func TestTenantRolesGetAVerifierNotThePassword(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	tenants, passwords := provisionBothWays(t, b)
	for i, path := range []string{"template", "warm"} {
		tenant, pw := tenants[i], passwords[i]
		super, err := pgx.Connect(ctx, b.server.DSN("postgres")) // pg_authid needs a superuser
		require.NoError(t, err)
		var secret string
		require.NoError(t, super.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, tenant.Role).Scan(&secret))
		super.Close(ctx)
		require.True(t, strings.HasPrefix(secret, fmt.Sprintf("SCRAM-SHA-256$%d:", scramIterations)), "%s: stored %.20s...", path, secret)
		require.NotContains(t, secret, pw)

		conn, err := pgx.Connect(ctx, withUser(b.server.DSN(tenant.Database), tenant.Role, pw))
		require.NoError(t, err, "%s: the tenant logs in with its password", path)
		conn.Close(ctx)
		_, err = pgx.Connect(ctx, withUser(b.server.DSN(tenant.Database), tenant.Role, pw+"x"))
		require.ErrorContains(t, err, "password authentication failed", "%s: and not with another", path)
	}
}

package provisioner

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// Both ways a tenant gets its role, the template path and a warm claim,
// give the server a cheap SCRAM verifier instead of the password, and the
// tenant logs in with the password the catalog holds.
func TestTenantRolesGetAVerifierNotThePassword(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, path := range []string{"template", "warm"} {
		cfg := b.cfg
		cfg.WarmPoolSize = -1
		if path == "warm" {
			cfg.WarmPoolSize = 1
		}
		p := b.start(t, cfg)
		if path == "warm" {
			srv, err := b.store.GetServer(ctx, "pg-1")
			require.NoError(t, err)
			require.Eventually(t, func() bool { return countWarm(t, p, srv) >= 1 }, time.Minute, 20*time.Millisecond)
		}
		tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "by-" + path, Plan: "basic"}, "test")
		require.NoError(t, err)
		tenant, err = p.WaitSettled(ctx, tenant.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tenant.State, tenant.LastError)
		_ = p.Stop(ctx)

		_, pw, err := b.store.TenantCredentials(ctx, tenant.ID)
		require.NoError(t, err)
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

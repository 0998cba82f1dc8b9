package provisioner

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// A process started with another TENANTPLANE_TENANT_CONN_LIMIT brings the
// roles made before it to that limit, and leaves roles that are not ours alone.
func TestChangedConnLimitReachesExistingRoles(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg := b.cfg
	cfg.WarmPoolSize = -1
	first := b.start(t, cfg)
	var tenants []catalog.Tenant
	for _, slug := range []string{"limit-a", "limit-b"} {
		tenant, _, err := first.CreateTenant(ctx, TenantSpec{Slug: slug, Plan: "basic"}, "test")
		require.NoError(t, err)
		tenant, err = first.WaitSettled(ctx, slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tenant.State, tenant.LastError)
		tenants = append(tenants, tenant)
	}
	require.NoError(t, first.Stop(ctx))

	super, err := pgx.Connect(ctx, b.server.DSN("postgres"))
	require.NoError(t, err)
	defer super.Close(ctx)
	_, err = super.Exec(ctx, `CREATE ROLE not_ours LOGIN CONNECTION LIMIT 3`)
	require.NoError(t, err)
	limit := func(role string) (n int) {
		require.NoError(t, super.QueryRow(ctx, `SELECT rolconnlimit FROM pg_roles WHERE rolname = $1`, role).Scan(&n))
		return n
	}
	require.Equal(t, 40, limit(tenants[0].Role), "made with the default limit")

	cfg.TenantConnLimit = 64
	b.start(t, cfg)
	require.Eventually(t, func() bool { return limit(tenants[0].Role) == 64 && limit(tenants[1].Role) == 64 },
		30*time.Second, 50*time.Millisecond, "existing tenant roles get the new limit")
	require.Equal(t, 3, limit("not_ours"))
}

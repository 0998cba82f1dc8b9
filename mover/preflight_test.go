package mover_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// A default server (wal_level=replica) registered with a managed role: the
// online mode is refused, naming the setting and the privilege.
func TestCheckOnlineRefusedOnDefaultServer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	source := newTenantDB(t, srv, `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE users (id bigint PRIMARY KEY);
		CREATE TABLE events (at timestamptz, what text)`)

	c, err := mover.CheckOnline(ctx, source.admin, source.serverDB)
	require.NoError(t, err)
	require.False(t, c.Possible)
	require.Len(t, c.Refusals, 3, c.Refusals)
	require.Contains(t, c.Refusals[0], "wal_level = replica")
	require.Contains(t, c.Refusals[0], "needs wal_level = logical")
	require.Contains(t, c.Refusals[1], "the source role tpadmin has neither REPLICATION nor superuser")
	require.Contains(t, c.Refusals[2], "tables without a primary key or replica identity: events")
	require.ErrorIs(t, c.Err(), mover.ErrOnlineUnavailable)
	require.ErrorContains(t, c.Err(), "wal_level")

	// A managed target role on PostgreSQL 15 cannot subscribe: the changes
	// would be applied by tenantplane.
	require.Equal(t, mover.ApplyStream, c.Apply)
	require.Contains(t, c.ApplyReason, "before PostgreSQL 16 only a superuser may")

	// A superuser target would take a native subscription.
	super, err := pgx.Connect(ctx, srv.DSN("postgres"))
	require.NoError(t, err)
	defer super.Close(ctx)
	c, err = mover.CheckOnline(ctx, source.admin, super)
	require.NoError(t, err)
	require.Equal(t, mover.ApplySubscription, c.Apply)
}

// A server with wal_level=logical where the superuser gave the managed role
// REPLICATION (as a provider's rds_replication grant does): the online mode
// can run, applied by tenantplane on a managed target.
func TestCheckOnlineOnLogicalServer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
	source := newTenantDB(t, srv, schemaDDL)
	target := newTenantDB(t, pgtest.NewServer(t), schemaDDL)

	c, err := mover.CheckOnline(ctx, source.admin, target.serverDB)
	require.NoError(t, err)
	require.Equal(t, []string{c.Refusals[0]}, c.Refusals, "only the privilege is missing")
	require.Contains(t, c.Refusals[0], `ALTER ROLE "tpadmin" REPLICATION`)

	superExec(t, ctx, srv, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	c, err = mover.CheckOnline(ctx, source.admin, target.serverDB)
	require.NoError(t, err)
	require.True(t, c.Possible, c.Refusals)
	require.NoError(t, c.Err())
	require.Equal(t, mover.ApplyStream, c.Apply)
	require.Equal(t, "tpadmin", c.SourceRole)
	require.Equal(t, "tpadmin", c.TargetRole)
}

func superExec(t *testing.T, ctx context.Context, srv *pgtest.Server, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	require.NoError(t, err)
}

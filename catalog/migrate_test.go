package catalog_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func tables(t *testing.T, dsn string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

func TestMigrateUpDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)

	require.NoError(t, catalog.Migrate(ctx, dsn))
	require.Subset(t, tables(t, dsn), []string{"api_keys", "audit_events", "servers", "tenants", "river_job"})
	v, dirty, err := catalog.SchemaVersion(ctx, dsn)
	require.NoError(t, err)
	require.False(t, dirty)
	require.Positive(t, v)

	// Up again is a no-op, not an error.
	require.NoError(t, catalog.Migrate(ctx, dsn))

	require.NoError(t, catalog.MigrateDown(ctx, dsn))
	require.Empty(t, tables(t, dsn))
	v, _, err = catalog.SchemaVersion(ctx, dsn)
	require.NoError(t, err)
	require.Zero(t, v)

	// And back up from nothing.
	require.NoError(t, catalog.Migrate(ctx, dsn))
	require.Subset(t, tables(t, dsn), []string{"servers", "tenants", "river_job"})
}

func TestMigrateConcurrentStarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)

	// Several processes starting at once all succeed; the schema is applied once.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = catalog.Migrate(ctx, dsn)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Subset(t, tables(t, dsn), []string{"servers", "tenants", "river_job"})
}

func TestMigrateUnreachable(t *testing.T) {
	t.Parallel()
	err := catalog.Migrate(context.Background(), "postgres://nobody:secret@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.ErrorIs(t, err, catalog.ErrUnavailable)
	require.NotContains(t, err.Error(), "secret")
}

package jobs

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// testBundle is a migrated catalog of the test's own: River's tables and job_clients.
type testBundle struct {
	pool *pgxpool.Pool
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.NewDB(t, catalogTemplate))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return &testBundle{pool: pool}
}

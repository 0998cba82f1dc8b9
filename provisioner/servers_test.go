package provisioner

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// A DSN that only the pool's parser refuses (catalog.ServerConfig) fails
// registration and, stored all the same, every later use with one category
// and message, which never echoes the DSN.
func TestMalformedServerDSNOneError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := openCatalog(ctx, pgtest.NewDB(t, catalogTemplate), catalog.NewKey(), catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	p, err := New(store, Config{Logger: slog.New(slog.DiscardHandler), WarmPoolSize: -1})
	require.NoError(t, err)
	const dsn = "postgres://admin:s3cret@127.0.0.1:1/postgres?pool_max_conns=many"

	_, regErr := p.RegisterServer(ctx, ServerSpec{Name: "pg-bad", DSN: dsn}, "test")
	require.ErrorIs(t, regErr, catalog.ErrInvalid)

	// Stored past the check (the catalog's own parser takes it): the admin
	// pool and the per-database config fail alike.
	srv, err := store.CreateServer(ctx, catalog.NewServer{Name: "pg-bad", DSN: dsn, Capacity: 1, ConnBudget: 1, Actor: "test"})
	require.NoError(t, err)
	_, adminErr := p.admin(ctx, srv.ID, srv.Name)
	_, dbErr := p.dbConfig(ctx, srv.Name, "postgres", "test")
	for _, err := range []error{regErr, adminErr, dbErr} {
		require.Equal(t, catalog.CodeInvalid, catalog.CodeOf(err), "%v", err)
		require.Equal(t, catalog.MessageOf(regErr), catalog.MessageOf(err))
		require.NotContains(t, err.Error(), "s3cret")
	}
}

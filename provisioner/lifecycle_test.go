package provisioner

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

func TestProvisionerStartsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := openCatalog(ctx, pgtest.NewDB(t, catalogTemplate), catalog.NewKey(), catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	p, err := New(store, Config{Logger: slog.New(slog.DiscardHandler), WarmPoolSize: -1})
	require.NoError(t, err)

	require.NoError(t, p.Start(ctx))
	require.ErrorIs(t, p.Start(ctx), startstop.ErrStarted)
	require.NoError(t, p.Stop(ctx))
	require.NoError(t, p.Stop(ctx), "stopping twice does nothing")
}

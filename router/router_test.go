package router

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

func TestRouterStartsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(t, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	r, err := New(Config{Store: store, Watcher: catalog.NewWatcher(store, nil), Ready: store.Ping, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)

	require.NoError(t, r.Start(ctx))
	require.ErrorIs(t, r.Start(ctx), startstop.ErrStarted)
	require.NoError(t, r.Stop(ctx))
	require.NoError(t, r.Start(ctx), "a stopped router starts again")
	require.NoError(t, r.Stop(ctx))
}

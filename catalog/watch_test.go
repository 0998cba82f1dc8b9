package catalog_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

func TestWatcherStartsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	w := catalog.NewWatcher(b.store, slog.New(slog.DiscardHandler))
	changes, unsubscribe := w.Subscribe()
	defer unsubscribe()
	require.NoError(t, w.Start(ctx))
	require.ErrorIs(t, w.Start(ctx), startstop.ErrStarted)

	// The listener is up once a notification comes through.
	require.Eventually(t, func() bool {
		_, err := b.store.Pool().Exec(ctx, `SELECT pg_notify($1, 'tenant-1')`, catalog.TenantChannel)
		require.NoError(t, err)
		select {
		case id := <-changes:
			return id == "tenant-1"
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}, 10*time.Second, time.Millisecond)

	w.Stop()
	require.NoError(t, w.Start(ctx), "a stopped watcher starts again")
	w.Stop()
}

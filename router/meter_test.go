package router

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestKeyUseWrittenOnceAMinute: a key in use has its last_used_at written
// at the first flush after a use, then not again for a minute, however
// many flushes see it used meanwhile.
func TestKeyUseWrittenOnceAMinute(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupFaults(t, pgtest.NewDB(t, catalogTemplate), Config{})
	b.addServer(t, "pg-1", pgtest.Shared(t).ManagedDSN(t, "postgres"))
	tn, _ := b.tenant(t, "meter", "pg-1")
	keys, _, err := b.store.ListAPIKeys(ctx, tn.ID, 10, "")
	require.NoError(t, err)
	require.Len(t, keys, 1)
	id := keys[0].ID
	lastUsed := func() time.Time {
		keys, _, err := b.store.ListAPIKeys(ctx, tn.ID, 10, "")
		require.NoError(t, err)
		require.NotNil(t, keys[0].LastUsedAt)
		return keys[0].LastUsedAt.UTC()
	}

	m := newMeter(b.store, slog.New(slog.DiscardHandler), time.Hour, nil)
	first := time.Now().UTC().Truncate(time.Millisecond)
	require.NoError(t, m.touchKeys(ctx, map[string]time.Time{id: first}))
	require.Equal(t, first, lastUsed(), "the first use is written")
	require.NoError(t, m.touchKeys(ctx, map[string]time.Time{id: first.Add(30 * time.Second)}))
	require.Equal(t, first, lastUsed(), "a use within the minute is not written again")
	later := first.Add(keyTouchEvery)
	require.NoError(t, m.touchKeys(ctx, map[string]time.Time{id: later}))
	require.Equal(t, later, lastUsed(), "a use a minute on is")
}

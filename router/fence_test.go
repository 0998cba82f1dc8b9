package router

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestRequestRacingAFence: a request this replica resolved before it heard
// of a move's hold finds the tenant's database fenced. Nothing has run, so
// it is held as a new request would be, and served once the move lets go,
// instead of answering 503. The hold here is written without its
// notification, so the replica does not hear of it by itself; the fence is
// the mover's (CONNECT revoked, sessions ended), made by hand.
func TestRequestRacingAFence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := pgtest.NewServer(t)
	catalogDSN := pgtest.NewDB(t, catalogTemplate)
	b := setupFaults(t, catalogDSN, Config{HoldTimeout: 10 * time.Second})
	b.addServer(t, "pg-1", srv.ManagedDSN(t, "postgres"))
	tn, key := b.tenant(t, "racing", "pg-1")
	status, _, err := b.get("/v1/users", key)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)

	cat, err := pgx.Connect(ctx, catalogDSN)
	require.NoError(t, err)
	defer cat.Close(ctx)
	admin, err := pgx.Connect(ctx, srv.DSN("postgres")) // a superuser: the test breaks the database on purpose
	require.NoError(t, err)
	defer admin.Close(ctx)
	db, role := pgx.Identifier{tn.Database}.Sanitize(), pgx.Identifier{tn.Role}.Sanitize()
	_, err = cat.Exec(ctx, `UPDATE tenants SET held = true WHERE id = $1`, tn.ID) // no NOTIFY
	require.NoError(t, err)
	_, err = admin.Exec(ctx, `REVOKE CONNECT ON DATABASE `+db+` FROM PUBLIC, `+role)
	require.NoError(t, err)
	_, err = admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, tn.Database)
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond) // the router's idle connections are checked before use again

	// The move lets go a moment later: the fence lifted, the hold ended and announced.
	const release = 700 * time.Millisecond
	var lifted sync.WaitGroup
	defer lifted.Wait() // before the connections close
	lifted.Go(func() {
		time.Sleep(release)
		_, err := admin.Exec(ctx, `GRANT CONNECT ON DATABASE `+db+` TO `+role)
		if err == nil {
			_, err = cat.Exec(ctx, `WITH u AS (UPDATE tenants SET held = false WHERE id = $1) SELECT pg_notify($2, $1::text)`, tn.ID, catalog.TenantChannel)
		}
		if err != nil {
			t.Errorf("lifting the fence: %v", err)
		}
	})
	status, took, err := b.get("/v1/users", key)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, "the request that met the fence is served once the move lets go")
	require.GreaterOrEqual(t, took, release, "it was held until then")
}

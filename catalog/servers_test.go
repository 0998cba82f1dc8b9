package catalog_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
)

func TestServers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	dsn := "postgres://admin:s3cret-pw@db1.internal:5433/postgres?sslmode=disable"

	srv, err := b.store.CreateServer(ctx, catalog.NewServer{Name: "pg-1", DSN: dsn, Capacity: 10, ConnBudget: 50, Actor: "test"})
	require.NoError(t, err)
	require.Equal(t, "pg-1", srv.Name)
	require.Equal(t, "postgres://admin@db1.internal:5433/postgres", srv.DSNRedacted)
	require.Equal(t, catalog.ServerActive, srv.State)

	t.Run("duplicate name is a conflict", func(t *testing.T) {
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: "pg-1", DSN: dsn, Capacity: 1, ConnBudget: 1})
		require.ErrorIs(t, err, catalog.ErrConflict)
		require.Equal(t, `server "pg-1" already exists`, catalog.MessageOf(err))
	})
	t.Run("bad name is invalid", func(t *testing.T) {
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: "PG_1", DSN: dsn, Capacity: 1, ConnBudget: 1})
		require.ErrorIs(t, err, catalog.ErrInvalid)
	})
	t.Run("missing is not found", func(t *testing.T) {
		_, err := b.store.GetServer(ctx, "nope")
		require.ErrorIs(t, err, catalog.ErrNotFound)
	})

	got, err := b.store.GetServer(ctx, "pg-1")
	require.NoError(t, err)
	require.Equal(t, srv, got)
	list, err := b.store.ListServers(ctx)
	require.NoError(t, err)
	require.Equal(t, []catalog.Server{srv}, list)

	// The DSN round-trips through the cipher, and the catalog never holds it in plaintext.
	plain, err := b.store.ServerDSN(ctx, "pg-1")
	require.NoError(t, err)
	require.Equal(t, dsn, plain)
	conn, err := pgx.Connect(ctx, b.dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var leaks bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM servers WHERE position(convert_to('s3cret-pw', 'UTF8') in dsn_sealed) > 0 OR dsn_redacted LIKE '%s3cret%')`).Scan(&leaks))
	require.False(t, leaks)

	// Registration is audited.
	events, err := b.store.ListAudit(ctx, catalog.AuditFilter{Subject: "pg-1"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "server.registered", events[0].Action)
	require.Equal(t, "test", events[0].Actor)

	require.NoError(t, b.store.UpdateServerDSN(ctx, "pg-1", "postgres://admin:new@db1.internal:5434/postgres", "test"))
	got, err = b.store.GetServer(ctx, "pg-1")
	require.NoError(t, err)
	require.Equal(t, "postgres://admin@db1.internal:5434/postgres", got.DSNRedacted)
	require.ErrorIs(t, b.store.UpdateServerDSN(ctx, "nope", dsn, "test"), catalog.ErrNotFound)
}

func TestSealedDSNIsBoundToItsRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: name, DSN: "postgres://u:" + name + "@h/db", Capacity: 1, ConnBudget: 1})
		require.NoError(t, err)
	}
	conn, err := pgx.Connect(ctx, b.dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	// Copying b's sealed DSN onto a does not give a b's credentials: it fails to open.
	_, err = conn.Exec(ctx, `UPDATE servers SET dsn_sealed = (SELECT dsn_sealed FROM servers WHERE name = 'b') WHERE name = 'a'`)
	require.NoError(t, err)
	_, err = b.store.ServerDSN(ctx, "a")
	require.ErrorContains(t, err, "cannot decrypt")
}

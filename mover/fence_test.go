package mover_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

func TestFence(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	td := newTenantDB(t, pgtest.Shared(t), `
		CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE notes (id serial PRIMARY KEY, body text)`)

	// Two sessions of the tenant: one idle, one in the middle of a write.
	idle, err := td.connect(ctx)
	require.NoError(t, err)
	defer idle.Close(ctx)
	writing, err := td.connect(ctx)
	require.NoError(t, err)
	defer writing.Close(ctx)
	tx, err := writing.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "INSERT INTO notes (body) VALUES ('uncommitted')")
	require.NoError(t, err)

	// As the managed admin role, which is no superuser.
	require.NoError(t, mover.Fence(ctx, td.serverDB, td.name, td.role))

	// Both sessions are cut, and the write in flight is gone.
	_, err = idle.Exec(ctx, "SELECT 1")
	require.Error(t, err)
	require.Error(t, tx.Commit(ctx))
	var n int
	require.NoError(t, td.admin.QueryRow(ctx, "SELECT count(*) FROM notes").Scan(&n))
	require.Zero(t, n)

	// A new session is refused at the database.
	_, err = td.connect(ctx)
	requireSQLState(t, err, "42501") // insufficient_privilege: permission denied for database

	// Fencing again changes nothing; the admin role keeps its own sessions.
	require.NoError(t, mover.Fence(ctx, td.serverDB, td.name, td.role))
	require.NoError(t, td.admin.QueryRow(ctx, "SELECT count(*) FROM notes").Scan(&n))

	require.NoError(t, mover.Unfence(ctx, td.serverDB, td.name, td.role))
	require.NoError(t, mover.Unfence(ctx, td.serverDB, td.name, td.role))
	back, err := td.connect(ctx)
	require.NoError(t, err)
	defer back.Close(ctx)
	_, err = back.Exec(ctx, "INSERT INTO notes (body) VALUES ('after the fence')")
	require.NoError(t, err)
}

// A tenant role that keeps CONNECT through another role is not fenced, and
// Fence says so rather than reporting a fence that does not hold.
func TestFenceRefusesWhenConnectRemains(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	td := newTenantDB(t, pgtest.Shared(t), `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)`)
	_, err := td.serverDB.Exec(ctx, "ALTER ROLE "+td.role+" INHERIT; CREATE ROLE "+td.role+"_readers; GRANT CONNECT ON DATABASE "+td.name+" TO "+td.role+"_readers; GRANT "+td.role+"_readers TO "+td.role)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = td.serverDB.Exec(ctx, "REVOKE CONNECT ON DATABASE "+td.name+" FROM "+td.role+"_readers; DROP ROLE "+td.role+"_readers")
	})
	err = mover.Fence(ctx, td.serverDB, td.name, td.role)
	require.ErrorIs(t, err, mover.ErrFenceIncomplete)
	require.ErrorContains(t, err, "may still connect")
}

func requireSQLState(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, pgErr.Message)
}

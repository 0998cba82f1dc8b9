package mover_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// The online mode end to end, applied by tenantplane: copy under the slot's
// snapshot while the tenant writes, catch up, fence, catch up to the fence,
// verify; then the slot and publication are dropped.
func TestStreamCatchUp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
	source := newTenantDB(t, srv, schemaDDL)
	superExec(t, ctx, srv, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	target := newTenantDB(t, pgtest.NewServer(t), schemaDDL)
	fillSource(t, source)

	const name = "tenantplane_move_test"
	stream, err := mover.OpenStream(ctx, srv.ManagedDSN(t, source.name), source.admin, name)
	require.NoError(t, err)
	defer stream.Close(ctx)

	// The tenant writes after the slot was made: none of it is in the
	// copy, all of it in the stream.
	tenant, err := source.connect(ctx)
	require.NoError(t, err)
	defer tenant.Close(ctx)
	_, err = tenant.Exec(ctx, `
		INSERT INTO users (account_id, email, note) SELECT 1, 'late' || i || '@example.com', E'late\nwrite' FROM generate_series(1, 300) i;
		UPDATE users SET score = -1, profile = '{"moved": true}' WHERE id % 10 = 0;
		DELETE FROM orders WHERE user_id % 3 = 0;
		UPDATE orders SET id = gen_random_uuid() WHERE user_id = 1; -- a new key
		UPDATE accounts SET name = name WHERE id = 7;
		INSERT INTO audit (parent_id, msg) VALUES (NULL, NULL)`)
	require.NoError(t, err)

	res, err := mover.Copy(ctx, source.admin, target.admin, mover.CopyOptions{Snapshot: stream.Snapshot()})
	require.NoError(t, err)
	require.EqualValues(t, userRows, res.Tables[2].Rows, "the copy is from the slot's snapshot")

	until, err := mover.CurrentLSN(ctx, source.admin)
	require.NoError(t, err)
	var lags []mover.Lag
	require.NoError(t, stream.CatchUp(ctx, target.admin, until, func(l mover.Lag) { lags = append(lags, l) }))
	require.GreaterOrEqual(t, stream.Applied(), until)

	// More writes, then the fence, then the last catch-up.
	_, err = tenant.Exec(ctx, `UPDATE users SET note = 'last' WHERE id = 1; INSERT INTO accounts (name) VALUES ('last')`)
	require.NoError(t, err)
	require.NoError(t, mover.Fence(ctx, source.serverDB, source.name, source.role))
	until, err = mover.CurrentLSN(ctx, source.admin)
	require.NoError(t, err)
	require.NoError(t, stream.CatchUp(ctx, target.admin, until, nil))
	_, err = mover.SyncSequences(ctx, source.admin, target.admin)
	require.NoError(t, err)

	vr, err := mover.Verify(ctx, source.admin, target.admin)
	require.NoError(t, err, "%v", vr.Differences)
	var n int
	require.NoError(t, target.admin.QueryRow(ctx, "SELECT count(*) FROM users WHERE email LIKE 'late%'").Scan(&n))
	require.Equal(t, 300, n)

	// The slot holds WAL on the source until it is dropped.
	require.NoError(t, stream.Close(ctx))
	require.NoError(t, mover.DropStream(ctx, source.admin, name))
	require.NoError(t, mover.DropStream(ctx, source.admin, name), "dropping twice is no error")
	var slots, pubs int
	require.NoError(t, source.admin.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication)").Scan(&slots, &pubs))
	require.Zero(t, slots)
	require.Zero(t, pubs)
}

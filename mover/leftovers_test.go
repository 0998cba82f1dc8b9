package mover_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// A replication slot and a publication named like a move's that no move
// owns (made by hand: what a process that died between making them and
// recording its move would leave) are reported and, when asked, removed;
// those of a move under way are not, and its job drops them itself.
func TestLeftovers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	src := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
	b := setupMove(t, src)
	superExec(t, ctx, src, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	fillWrites(t, b, 100)

	catchingUp, release := make(chan struct{}), make(chan struct{})
	svc, _ := b.service(t, func(ctx context.Context, id int64, phase string) error {
		if phase != mover.PhaseCatchingUp {
			return nil
		}
		close(catchingUp)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2"}, "test")
	require.NoError(t, err)
	<-catchingUp

	stray := fmt.Sprintf("tenantplane_move_%d", m.ID+100)
	admin := b.adminConn(t, "pg-1")
	_, err = admin.Exec(ctx, "CREATE PUBLICATION "+stray+" FOR TABLE writes")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", stray)
	require.NoError(t, err)
	// Someone else's, named otherwise: never reported.
	_, err = admin.Exec(ctx, "SELECT pg_create_logical_replication_slot('other_tool', 'pgoutput')")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "SELECT pg_drop_replication_slot('other_tool')") })

	want := []mover.Leftover{
		{Server: "pg-1", Kind: mover.KindPublication, Name: stray, Database: b.tenant.Database, Why: fmt.Sprintf("no move %d in the catalog", m.ID+100)},
		{Server: "pg-1", Kind: mover.KindSlot, Name: stray, Database: b.tenant.Database, Why: fmt.Sprintf("no move %d in the catalog", m.ID+100)},
	}
	found, err := svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.ElementsMatch(t, want, found, "the stray slot and publication, not the open move's")

	found, err = svc.Leftovers(ctx, true)
	require.NoError(t, err)
	for i := range want {
		want[i].Gone = true
	}
	require.ElementsMatch(t, want, found)
	slots, pubs := replicationObjects(t, admin)
	require.ElementsMatch(t, []string{fmt.Sprintf("tenantplane_move_%d", m.ID), "other_tool"}, slots, "the open move's slot stays")
	require.Equal(t, []string{fmt.Sprintf("tenantplane_move_%d", m.ID)}, pubs, "the open move's publication stays")

	close(release)
	m = waitMove(t, svc, m.ID)
	require.Equal(t, mover.PhaseDone, m.Phase, m.LastError)
	found, err = svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.Empty(t, found)
	slots, pubs = replicationObjects(t, admin)
	require.Equal(t, []string{"other_tool"}, slots)
	require.Empty(t, pubs)
}

// replicationObjects lists the replication slots of conn's server and the
// publications of its database.
func replicationObjects(t *testing.T, conn *pgx.Conn) (slots, pubs []string) {
	t.Helper()
	ctx := testContext(t)
	rows, err := conn.Query(ctx, "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
	require.NoError(t, err)
	slots, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	rows, err = conn.Query(ctx, "SELECT pubname::text FROM pg_publication ORDER BY 1")
	require.NoError(t, err)
	pubs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return slots, pubs
}

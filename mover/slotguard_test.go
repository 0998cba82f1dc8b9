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

// A source whose max_slot_wal_keep_size is unbounded is named in the move's
// mode_reason; one where it is set and the move's slot falls behind it
// (lost or unreserved, here by WAL written while the move waits) aborts the
// move with the reason, the source serving again.
func TestMoveAbortsWhenSlotLosesWAL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	src := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical", "max_slot_wal_keep_size": "1MB"})
	b := setupMove(t, src)
	superExec(t, ctx, src, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	fillWrites(t, b, 100)

	svc, _ := b.service(t, func(ctx context.Context, id int64, phase string) error {
		if phase != mover.PhaseCatchingUp {
			return nil
		}
		conn, err := pgx.Connect(ctx, src.DSN("postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS junk (x text)"); err != nil {
			return err
		}
		for range 20 {
			var status string
			if err := conn.QueryRow(ctx, "SELECT coalesce(max(wal_status), '') FROM pg_replication_slots WHERE slot_name = $1",
				fmt.Sprintf("tenantplane_move_%d", id)).Scan(&status); err != nil {
				return err
			}
			if status == "lost" || status == "unreserved" {
				return nil
			}
			if _, err := conn.Exec(ctx, `INSERT INTO junk SELECT repeat(md5(i::text), 16) FROM generate_series(1, 20000) i;
				SELECT pg_switch_wal(); CHECKPOINT`); err != nil {
				return err
			}
		}
		return fmt.Errorf("the slot kept its WAL")
	})
	m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2"}, "test")
	require.NoError(t, err)
	require.NotContains(t, m.ModeReason, "max_slot_wal_keep_size", "bounded here")
	m = waitMove(t, svc, m.ID)
	require.Equal(t, mover.PhaseAborted, m.Phase)
	require.Regexp(t, `^replication slot tenantplane_move_\d+ on pg-1 is (lost|unreserved): `, m.LastError)
	checkAborted(t, b, 100)
	slots, pubs := replicationObjects(t, b.adminConn(t, "pg-1"))
	require.Empty(t, slots)
	require.Empty(t, pubs)
}

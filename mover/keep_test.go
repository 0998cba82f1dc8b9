package mover_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// setupKept is a move bundle whose two servers both allow logical
// replication (wal_level = logical, REPLICATION for the managed role): an
// online move there keeps its source in step.
func setupKept(t *testing.T) *moveBundle {
	t.Helper()
	ctx := testContext(t)
	src := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
	dst := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
	b := setupMoveTo(t, src, dst)
	for _, srv := range []*pgtest.Server{src, dst} {
		superExec(t, ctx, srv, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	}
	return b
}

// moveKept moves acme to pg-2 online and waits for the move to be done,
// its source kept in step.
func moveKept(t *testing.T, svc *mover.Service) mover.Move {
	t.Helper()
	ctx := testContext(t)
	m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2"}, "test")
	require.NoError(t, err)
	require.Equal(t, mover.ModeOnline, m.Mode, m.ModeReason)
	m = waitMove(t, svc, m.ID)
	require.Equal(t, mover.PhaseDone, m.Phase, m.LastError)
	require.True(t, m.KeepInStep, m.KeepReason)
	return m
}

// slotsOn lists the replication slots on server name.
func (b *moveBundle) slotsOn(t *testing.T, name string) []string {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, b.servers[name].ManagedDSN(t, "postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

func slotOf(id int64) string { return "tenantplane_move_" + strconv.FormatInt(id, 10) }

// waitKeptInStep waits for the tenant's last write on pg-2 to be on the
// kept source, pg-1.
func (b *moveBundle) waitKeptInStep(t *testing.T) {
	t.Helper()
	ctx := testContext(t)
	kept, live := b.adminConn(t, "pg-1"), b.adminConn(t, "pg-2")
	var last int64
	require.NoError(t, live.QueryRow(ctx, "SELECT max(n) FROM writes").Scan(&last))
	require.Eventually(t, func() bool {
		var there bool
		require.NoError(t, kept.QueryRow(ctx, "SELECT EXISTS (SELECT FROM writes WHERE n = $1)", last).Scan(&there))
		return there
	}, 30*time.Second, 50*time.Millisecond, "write %d on the target is on the kept source", last)
}

// checkRevertedInStep asserts what an in-step revert under the writer's
// load must leave: the tenant back on pg-1, served there, with every
// acknowledged write exactly once (those made on pg-2 with the id pg-2
// gave them), the serial going on, and nothing copied.
func checkRevertedInStep(t *testing.T, b *moveBundle, r mover.Move, acks map[int64]string, onTarget map[int64]int64) {
	t.Helper()
	ctx := testContext(t)
	require.Equal(t, mover.PhaseDone, r.Phase, r.LastError)
	require.Zero(t, r.RowsCopied, "an in-step revert copies nothing")
	require.Contains(t, r.ModeReason, "is kept in step: the revert catches up the last writes and switches back")
	tnt, err := b.store.GetTenantByID(ctx, b.tenant.ID)
	require.NoError(t, err)
	require.Equal(t, "pg-1", tnt.Server)
	require.False(t, tnt.Held)
	require.Nil(t, tnt.MoveID)

	src := b.adminConn(t, "pg-1")
	var rows, distinct int
	require.NoError(t, src.QueryRow(ctx, "SELECT count(*), count(DISTINCT n) FROM writes").Scan(&rows, &distinct))
	require.Equal(t, rows, distinct)
	source := rowsOf(t, src)
	toTarget := 0
	for n, server := range acks {
		require.Contains(t, source, n, "acknowledged write %d (made on %s) is on the source", n, server)
		if server == "pg-2" {
			toTarget++
		}
	}
	require.Positive(t, toTarget, "the writer wrote on the target between the move and the revert")
	for n, id := range onTarget {
		require.Equal(t, id, source[n], "write %d made on the target is on the source with the target's id", n)
	}
	written := 0
	for n := range source {
		if n > 0 {
			written++
		}
	}
	require.LessOrEqual(t, written, len(acks)+1, "only the write in flight at the writer's stop may be unacknowledged")

	conn, err := b.tenantConn(ctx, t, "pg-1")
	require.NoError(t, err, "the source serves the tenant again")
	defer conn.Close(ctx)
	var maxID, id int64
	require.NoError(t, src.QueryRow(ctx, "SELECT max(id) FROM writes").Scan(&maxID))
	require.NoError(t, conn.QueryRow(ctx, "INSERT INTO writes (n) VALUES (-2) RETURNING id").Scan(&id))
	require.Greater(t, id, maxID, "the serial goes on")
	_, err = b.tenantConn(ctx, t, "pg-2")
	require.Error(t, err, "pg-2, kept in turn, refuses the tenant role")
}

// An online move between two servers that both replicate keeps its source
// in step; a revert under continuous writes then only catches up and
// switches back: a short write pause, no copy, every acknowledged write on
// the source exactly once.
func TestMoveRevertInStepUnderWrites(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 5000)
	svc, _ := b.service(t, nil)

	w := b.startWriter(t)
	time.Sleep(300 * time.Millisecond)
	m := moveKept(t, svc)
	require.Contains(t, m.KeepReason, "kept in step: a slot on pg-2 streams the tenant's writes to the fenced source")
	require.Contains(t, m.KeepReason, "max_slot_wal_keep_size is unbounded on pg-2")
	require.Equal(t, []string{slotOf(m.ID)}, b.slotsOn(t, "pg-2"), "the keep's slot, named like the move")
	leftovers, err := svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.Empty(t, leftovers, "the keep's slot and publication are the move's own")
	_, err = b.tenantConn(ctx, t, "pg-1")
	require.Error(t, err, "the kept source stays fenced for the tenant role")

	// The tenant's writes on pg-2 reach the kept source meanwhile.
	time.Sleep(time.Second)
	b.waitKeptInStep(t)

	r, err := svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	require.Equal(t, mover.ModeOnline, r.Mode)
	r = waitMove(t, svc, r.ID)
	require.Equal(t, mover.PhaseDone, r.Phase, r.LastError)
	onTarget := rowsOf(t, b.adminConn(t, "pg-2")) // fenced since the revert's hold: all it got
	time.Sleep(300 * time.Millisecond)
	acks, gap := w.result()
	require.NotNil(t, r.WritePauseMS)
	t.Logf("in-step revert: write pause %d ms (recorded), longest gap between writes %s, %d writes", *r.WritePauseMS, gap.Round(time.Millisecond), len(acks))
	// Bounded by the routers' hold (5 s); the 1 s target is the
	// benchmark's (BenchmarkMoveRevertInStep, BENCHMARKS.md).
	require.Less(t, *r.WritePauseMS, int64(5000))
	require.Less(t, gap, 5*time.Second)
	checkRevertedInStep(t, b, r, acks, onTarget)

	orig, err := svc.Get(ctx, m.ID)
	require.NoError(t, err)
	require.Equal(t, mover.PhaseReverted, orig.Phase)
	require.Eventually(t, func() bool {
		orig, err = svc.Get(ctx, m.ID)
		require.NoError(t, err)
		return !orig.KeepInStep
	}, 20*time.Second, 50*time.Millisecond, "the reverted move's keep is over")
	require.Contains(t, orig.KeepReason, "kept in step until reverted")
	full, changed := mover.FenceVerifies(svc)
	require.Equal(t, [2]int64{0, 2}, [2]int64{full, changed}, "the move's and the revert's fences verified only the rows written")
	// The reverted move's slot is gone from pg-2; the revert keeps its own
	// source (pg-2) in step from pg-1.
	require.Eventually(t, func() bool { return len(b.slotsOn(t, "pg-2")) == 0 }, 10*time.Second, 20*time.Millisecond,
		"the reverted move's slot is dropped right after the switch")
	require.Equal(t, []string{slotOf(r.ID)}, b.slotsOn(t, "pg-1"))
	r, err = svc.Get(ctx, r.ID)
	require.NoError(t, err)
	require.True(t, r.KeepInStep, r.KeepReason)
	leftovers, err = svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.Empty(t, leftovers)
}

// The keep ends with the grace period: the source is dropped, and with it
// the slot and publication on the target; the move says so and can no
// longer be reverted.
func TestMoveKeepExpiryDropsSlot(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 100)
	svc, _ := b.serviceKeeping(t, 4*time.Second, nil)
	m := moveKept(t, svc)
	require.Equal(t, []string{slotOf(m.ID)}, b.slotsOn(t, "pg-2"))

	require.Eventually(t, func() bool { return !b.databaseExists(t, "pg-1") }, 30*time.Second, 50*time.Millisecond, "the source is dropped")
	require.Eventually(t, func() bool { return len(b.slotsOn(t, "pg-2")) == 0 }, 10*time.Second, 50*time.Millisecond, "the keep's slot is dropped")
	var pubs int
	require.NoError(t, b.adminConn(t, "pg-2").QueryRow(ctx, "SELECT count(*) FROM pg_publication").Scan(&pubs))
	require.Zero(t, pubs, "the keep's publication is dropped")
	m, err := svc.Get(ctx, m.ID)
	require.NoError(t, err)
	require.False(t, m.KeepInStep)
	require.Contains(t, m.KeepReason, "the source and the slot are dropped")
	_, err = svc.Revert(ctx, m.ID, "test")
	require.ErrorIs(t, err, catalog.ErrConflict)
	leftovers, err := svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.Empty(t, leftovers)
}

// The process keeping a source in step is killed (SIGKILL) right after it
// committed a transaction on the kept source and before it confirmed it to
// the slot: a restart takes the keep over from the kept source's ledger,
// and a revert under continuous writes then finds every acknowledged write
// on the source exactly once (a transaction applied twice would break the
// unique n, stop the keep, and make the revert copy).
func TestMoveKeepKilled(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 2000)

	svc, reg, helper, stdout := startMoveHelper(t, b, mover.StepKeepApplied)
	w := b.startWriter(t)
	time.Sleep(200 * time.Millisecond)
	m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2"}, "test")
	require.NoError(t, err)
	select {
	case line := <-stdout.C():
		require.Equal(t, "reached "+mover.StepKeepApplied, line)
	case <-helper.Exited():
		t.Fatalf("the helper process exited (%v) before its keep applied a transaction", helper.Err())
	case <-time.After(60 * time.Second):
		m, _ := svc.Get(ctx, m.ID)
		t.Fatalf("the helper's keep applied nothing within 60s: move %s, %q, keep %q", m.Phase, m.LastError, m.KeepReason)
	}
	time.Sleep(300 * time.Millisecond) // the tenant writes on meanwhile
	helper.Kill(t)
	// What the kill left: a transaction applied on the kept source (its
	// ledger's position) past what the slot was told (confirmed).
	var applied, confirmed string
	require.NoError(t, b.adminConn(t, "pg-1").QueryRow(ctx, "SELECT lsn::text FROM tenantplane_keep.progress").Scan(&applied))
	require.NoError(t, b.adminConn(t, "pg-2").QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots").Scan(&confirmed))
	var behind bool
	require.NoError(t, b.adminConn(t, "pg-1").QueryRow(ctx, "SELECT $1::pg_lsn < $2::pg_lsn", confirmed, applied).Scan(&behind))
	require.True(t, behind, "confirmed %s, applied %s", confirmed, applied)
	m, err = svc.Get(ctx, m.ID)
	require.NoError(t, err)
	require.Equal(t, mover.PhaseDone, m.Phase)
	require.True(t, m.KeepInStep, m.KeepReason)

	require.NoError(t, reg.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = reg.Stop(ctx)
	})
	// The restart's keep catches up: the kept source gets the writes made
	// since the kill.
	b.waitKeptInStep(t)
	var attempt int
	require.NoError(t, b.store.Pool().QueryRow(ctx, `SELECT attempt FROM river_job WHERE kind = 'tenantplane.move_keep' AND (args->>'move_id')::bigint = $1`,
		m.ID).Scan(&attempt))
	require.GreaterOrEqual(t, attempt, 2, "kept by the restart, not by the killed process")

	r, err := svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	r = waitMove(t, svc, r.ID)
	onTarget := rowsOf(t, b.adminConn(t, "pg-2"))
	time.Sleep(300 * time.Millisecond)
	acks, gap := w.result()
	t.Logf("in-step revert after a killed keep: write pause %d ms, longest gap between writes %s, %d writes", *r.WritePauseMS, gap.Round(time.Millisecond), len(acks))
	require.Less(t, gap, 5*time.Second)
	checkRevertedInStep(t, b, r, acks, onTarget)
	full, changed := mover.FenceVerifies(svc)
	require.Equal(t, [2]int64{0, 1}, [2]int64{full, changed}, "the revert's fence verified only the rows written since the move")
}

// A row of the kept source changed by hand: the in-step revert's fence
// finds it among the rows written since the move and aborts, naming the
// table; the tenant stays served on the target, the keep ends saying why,
// and the next revert copies every row back.
func TestMoveRevertInStepMismatch(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 100)
	svc, _ := b.service(t, nil)
	m := moveKept(t, svc)

	conn, err := b.tenantConn(ctx, t, "pg-2")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "INSERT INTO writes (n) SELECT i FROM generate_series(1, 20) i")
	require.NoError(t, err)
	conn.Close(ctx)
	b.waitKeptInStep(t)
	_, err = b.adminConn(t, "pg-1").Exec(ctx, "UPDATE writes SET at = at + interval '1 second' WHERE n = 7")
	require.NoError(t, err)

	r, err := svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	r = waitMove(t, svc, r.ID)
	require.Equal(t, mover.PhaseAborted, r.Phase)
	require.Contains(t, r.LastError, "verification failed")
	require.Contains(t, r.LastError, "table writes")
	tnt, err := b.store.GetTenantByID(ctx, b.tenant.ID)
	require.NoError(t, err)
	require.Equal(t, "pg-2", tnt.Server)
	require.False(t, tnt.Held)
	conn, err = b.tenantConn(ctx, t, "pg-2")
	require.NoError(t, err, "the target serves the tenant again")
	_, err = conn.Exec(ctx, "INSERT INTO writes (n) VALUES (21)")
	require.NoError(t, err)
	conn.Close(ctx)
	_, err = b.tenantConn(ctx, t, "pg-1")
	require.Error(t, err, "the kept source is fenced again")

	m, err = svc.Get(ctx, m.ID)
	require.NoError(t, err)
	require.Equal(t, mover.PhaseDone, m.Phase)
	require.False(t, m.KeepInStep)
	require.Contains(t, m.KeepReason, "the source is no longer kept in step: revert")
	require.Empty(t, b.slotsOn(t, "pg-2"), "the keep's slot is dropped")

	r, err = svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	r = waitMove(t, svc, r.ID)
	require.Equal(t, mover.PhaseDone, r.Phase, r.LastError)
	require.Positive(t, r.RowsCopied, "a revert of a move no longer kept in step copies")
	want := rowsOf(t, b.adminConn(t, "pg-2"))
	require.Equal(t, want, rowsOf(t, b.adminConn(t, "pg-1")))
}

// A tenant deleted while its moved source is kept in step: the keep ends
// at once, its slot dropped, so that nothing holds the tenant's database
// when the provisioner drops it after the grace period.
func TestMoveKeepEndsWhenTenantDeleted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 100)
	svc, _ := b.service(t, nil)
	m := moveKept(t, svc)

	_, err := b.prov.Delete(ctx, "acme", "test", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		m, err = svc.Get(ctx, m.ID)
		require.NoError(t, err)
		return !m.KeepInStep
	}, 20*time.Second, 50*time.Millisecond)
	require.Contains(t, m.KeepReason, "tenant acme is deleting")
	require.Empty(t, b.slotsOn(t, "pg-2"))
}

// A schema change on the tenant's database after the move (a fan-out
// migration there) is not streamed: the keep ends saying why, and a revert
// copies.
func TestMoveKeepEndsOnSchemaChange(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 100)
	svc, _ := b.service(t, nil)
	m := moveKept(t, svc)

	live := b.adminConn(t, "pg-2")
	_, err := live.Exec(ctx, "ALTER TABLE writes ADD COLUMN extra int NOT NULL DEFAULT 0; UPDATE schema_migrations SET version = version + 1")
	require.NoError(t, err)
	_, err = live.Exec(ctx, "INSERT INTO writes (n, extra) VALUES (1, 1)")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		m, err = svc.Get(ctx, m.ID)
		require.NoError(t, err)
		return !m.KeepInStep
	}, 90*time.Second, 100*time.Millisecond)
	// Seen by whichever comes first: the change that does not apply, or
	// the keep's check of the schema versions.
	if !strings.Contains(m.KeepReason, "column extra not on the target") {
		require.Contains(t, m.KeepReason, "the tenant's schema is at version 2, the kept source's at version 1 (a migration since the switch: DDL is not streamed)")
	}
	require.Empty(t, b.slotsOn(t, "pg-2"))
}

// A revert of a move kept in step that is cancelled leaves the keep going:
// the writes made after it reach the kept source, and the next revert
// switches back in step.
func TestMoveRevertInStepCancelledKeepGoesOn(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupKept(t)
	fillWrites(t, b, 100)
	var svc *mover.Service
	var moved atomic.Int64
	var cancelled atomic.Bool
	svc, _ = b.service(t, func(ctx context.Context, id int64, phase string) error {
		if phase == mover.PhaseCatchingUp && moved.Load() != 0 && id != moved.Load() && cancelled.CompareAndSwap(false, true) {
			_, err := svc.Cancel(ctx, id, "test")
			return err
		}
		return nil
	})
	m := moveKept(t, svc)
	moved.Store(m.ID)

	r, err := svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	r = waitMove(t, svc, r.ID)
	require.Equal(t, mover.PhaseAborted, r.Phase)
	require.Equal(t, "cancelled", r.LastError)
	m, err = svc.Get(ctx, m.ID)
	require.NoError(t, err)
	require.True(t, m.KeepInStep, m.KeepReason)

	conn, err := b.tenantConn(ctx, t, "pg-2")
	require.NoError(t, err, "the tenant is served on the target")
	_, err = conn.Exec(ctx, "INSERT INTO writes (n) SELECT i FROM generate_series(1, 50) i")
	require.NoError(t, err)
	conn.Close(ctx)
	b.waitKeptInStep(t)

	r, err = svc.Revert(ctx, m.ID, "test")
	require.NoError(t, err)
	r = waitMove(t, svc, r.ID)
	require.Equal(t, mover.PhaseDone, r.Phase, r.LastError)
	require.Zero(t, r.RowsCopied)
	require.Equal(t, rowsOf(t, b.adminConn(t, "pg-2")), rowsOf(t, b.adminConn(t, "pg-1")))
}

package mover_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// moveHelperEnv names the environment of the moving helper process; its
// value is the hook point (a phase, or mover.StepCopied) where it stops.
const moveHelperEnv = "TENANTPLANE_MOVE_HELPER"

// moveHelperProcess is not a test: it is the process that
// TestMoveKilledInEachPhase starts and kills. TestMain runs it instead of
// the tests when moveHelperEnv is set. It runs a provisioner (for the
// target) and a move service on the catalog its environment names; when
// the move reaches the hook point it says "reached <point>" on stdout and
// hangs until it is killed.
func moveHelperProcess() error {
	ctx := context.Background()
	at := os.Getenv(moveHelperEnv)
	store, err := openCatalog(ctx, os.Getenv("CATALOG_DSN"), os.Getenv("SECRET_KEY"))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "move-helper")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	schema, err := loadMoveSchema(dir)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, Migrations: &schema, WarmPoolSize: -1})
	if err != nil {
		return err
	}
	cfg := mover.Config{Logger: logger, Targets: prov, Keep: time.Hour}
	mover.SetAfterPhase(&cfg, func(ctx context.Context, id int64, phase string) error {
		if phase != at {
			return nil
		}
		fmt.Printf("reached %s\n", phase)
		select {} // until killed: no deferred call, no rollback runs
	})
	svc, err := mover.New(store, cfg)
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	select {}
}

// TestMoveKilledInEachPhase: the process moving a tenant, under a writer
// numbering its inserts, is killed (SIGKILL) in each phase of an online
// move: copying (the copy done, its slot and publication made),
// catching_up, fenced (the tenant held and the source fenced), verifying
// (held and fenced, the stream dropped), switched (the catalog flipped, the
// job not done); and in a copy-mode move's copying (held and fenced). A
// service started afterwards takes the dead process's job over once its
// job client has missed its beats, and every one of these moves ends done:
// each phase is recorded and idempotent, and the resumed run goes on from
// it (a run killed while copying starts its stream over; one killed while
// catching up, fenced or verifying goes on from the stream's slot and the
// target's ledger, copying nothing again, and its fence verifies only the
// rows the stream wrote). None is rolled
// back, because nothing stops it from going on: a rollback is for a move
// that cannot (a verification difference, a lost slot, its last attempt)
// or is cancelled, as the last case is, while its process is dead and the
// source fenced: the restart rolls it back (aborted, the source unfenced,
// the target dropped). After each: the tenant is neither held nor fenced
// and served where the catalog says, with every acknowledged write once;
// nothing of the move is left on either server (databases, roles, slots,
// publications, subscriptions) but the kept source of a done move; and the
// writer was never without service for longer than the phase's bound.
func TestMoveKilledInEachPhase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		phase, at string // the phase recorded, the hook point where the process is killed
		mode      string
		// held: the kill leaves the tenant held (its writes wait for the
		// restart to end the move).
		held bool
		// cancel: the move is cancelled while its process is dead, so the
		// restart rolls it back.
		cancel bool
		// resumes: the restart goes on from the stream's slot and the
		// target's ledger, copying nothing again, and its fence verifies
		// only the rows the stream wrote.
		resumes bool
	}{
		{name: "copying", phase: mover.PhaseCopying, at: mover.StepCopied, mode: mover.ModeOnline},
		{name: "catching_up", phase: mover.PhaseCatchingUp, at: mover.PhaseCatchingUp, mode: mover.ModeOnline, resumes: true},
		{name: "fenced", phase: mover.PhaseFenced, at: mover.PhaseFenced, mode: mover.ModeOnline, held: true, resumes: true},
		{name: "verifying", phase: mover.PhaseVerifying, at: mover.PhaseVerifying, mode: mover.ModeOnline, held: true, resumes: true},
		{name: "switched", phase: mover.PhaseSwitched, at: mover.PhaseSwitched, mode: mover.ModeOnline},
		{name: "copy_mode_copying", phase: mover.PhaseCopying, at: mover.PhaseCopying, mode: mover.ModeCopy, held: true},
		{name: "fenced_then_cancelled", phase: mover.PhaseFenced, at: mover.PhaseFenced, mode: mover.ModeOnline, held: true, cancel: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			src := pgtest.NewServerWithSettings(t, map[string]string{"wal_level": "logical"})
			b := setupMove(t, src)
			superExec(t, ctx, src, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
			fillWrites(t, b, 5000)

			svc, reg, helper, stdout := startMoveHelper(t, b, tc.at)
			w := b.startWriter(t)
			time.Sleep(200 * time.Millisecond)
			m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2", Mode: tc.mode}, "test")
			require.NoError(t, err)
			require.Equal(t, tc.mode, m.Mode, m.ModeReason)
			select {
			case line := <-stdout.C():
				require.Equal(t, "reached "+tc.at, line)
			case <-helper.Exited():
				t.Fatalf("the helper process exited (%v) before the move reached %s", helper.Err(), tc.at)
			case <-time.After(60 * time.Second):
				m, _ := svc.Get(ctx, m.ID)
				t.Fatalf("the move did not reach %s in the helper process within 60s: %s, %q", tc.at, m.Phase, m.LastError)
			}
			time.Sleep(200 * time.Millisecond) // writes go on, or wait, meanwhile
			helper.Kill(t)
			killedAt := time.Now()
			tnt, err := b.store.GetTenantByID(ctx, b.tenant.ID)
			require.NoError(t, err)
			require.Equal(t, tc.held, tnt.Held, "held when killed")
			killed, err := svc.Get(ctx, m.ID)
			require.NoError(t, err)
			require.Equal(t, tc.phase, killed.Phase, "the phase recorded when killed")
			if tc.cancel {
				_, err := svc.Cancel(ctx, m.ID, "test")
				require.NoError(t, err)
			}

			require.NoError(t, reg.Start(context.Background()))
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = reg.Stop(ctx)
			})
			m = waitMove(t, svc, m.ID)
			finished := time.Since(killedAt)
			time.Sleep(200 * time.Millisecond)
			acks, gap := w.result()
			t.Logf("killed at %s (%s mode): %s %s after the kill; longest gap between writes %s (%d writes)",
				tc.at, tc.mode, m.Phase, finished.Round(10*time.Millisecond), gap.Round(10*time.Millisecond), len(acks))
			if tc.cancel {
				require.Equal(t, mover.PhaseAborted, m.Phase)
				require.Equal(t, "cancelled", m.LastError)
				checkRolledBack(t, b, acks)
			} else {
				require.Equal(t, mover.PhaseDone, m.Phase, m.LastError)
				checkMoved(t, b, m, acks)
			}
			if tc.resumes {
				require.Equal(t, killed.RowsCopied, m.RowsCopied, "not copied again")
				full, changed := mover.FenceVerifies(svc)
				require.Equal(t, [2]int64{0, 1}, [2]int64{full, changed}, "the restart's fence verified only the rows the stream wrote")
			}
			// The bound: a kill that leaves the tenant held holds its writes
			// until the restart has judged the dead process (ClientDeadAfter
			// and a beat) and finished the move; any other holds them for
			// the last catch-up only, within the routers' 5s hold.
			bound := 5 * time.Second
			if tc.held {
				bound = finished + time.Second
			}
			require.Less(t, gap, bound, "the longest time the tenant was not served")

			var attempt int
			require.NoError(t, b.store.Pool().QueryRow(ctx, `SELECT attempt FROM river_job WHERE kind = 'tenantplane.move' AND (args->>'move_id')::bigint = $1`,
				m.ID).Scan(&attempt))
			require.GreaterOrEqual(t, attempt, 2, "finished by the restart, not by the killed process")
			checkNoLeftovers(t, b, svc, !tc.cancel)
		})
	}
}

// startMoveHelper starts the moving helper process, which stops at hook
// point at, and the restarted process's service: it starts moves, but only
// works jobs once reg is started (after the helper's death). It judges a
// job client dead after 2s without a beat (10s by default).
func startMoveHelper(t *testing.T, b *moveBundle, at string) (*mover.Service, *jobs.Registry, *helperproc.Process, *helperproc.Lines) {
	t.Helper()
	reg := jobs.NewRegistry()
	svc, err := mover.New(b.store, mover.Config{Logger: b.logger, Jobs: reg, Targets: b.prov, Keep: time.Hour})
	require.NoError(t, err)
	require.NoError(t, reg.Open(b.store.Pool(), jobs.Config{Logger: b.logger, HeartbeatInterval: 500 * time.Millisecond, ClientDeadAfter: 2 * time.Second}))
	stdout := helperproc.NewLines(16)
	helper := helperproc.Start(t, stdout, moveHelperEnv+"="+at, "CATALOG_DSN="+b.dsn, "SECRET_KEY="+b.secret)
	return svc, reg, helper, stdout
}

// checkRolledBack asserts what a move rolled back under the writer's load
// must leave: the tenant on its source, neither held nor fenced, with every
// acknowledged write, all of them made there.
func checkRolledBack(t *testing.T, b *moveBundle, acks map[int64]string) {
	t.Helper()
	ctx := testContext(t)
	tnt, err := b.store.GetTenantByID(ctx, b.tenant.ID)
	require.NoError(t, err)
	require.Equal(t, "pg-1", tnt.Server)
	require.False(t, tnt.Held)
	require.Nil(t, tnt.MoveID)
	conn, err := b.tenantConn(ctx, t, "pg-1")
	require.NoError(t, err, "the source serves the tenant again")
	defer conn.Close(ctx)
	source := rowsOf(t, conn)
	for n, server := range acks {
		require.Equal(t, "pg-1", server, "write %d", n)
		require.Contains(t, source, n, "acknowledged write %d is on the source", n)
	}
}

// checkNoLeftovers asserts that nothing of a move is left on either server:
// no replication slot, publication or subscription at all, no orphan
// database or role; the tenant's database on the target if it moved, and
// on the source if it stayed or the source is kept.
func checkNoLeftovers(t *testing.T, b *moveBundle, svc *mover.Service, moved bool) {
	t.Helper()
	ctx := testContext(t)
	for _, name := range []string{"pg-1", "pg-2"} {
		conn, err := pgx.Connect(ctx, b.servers[name].DSN("postgres"))
		require.NoError(t, err)
		var slots, subs int
		require.NoError(t, conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_subscription)").Scan(&slots, &subs))
		require.Zero(t, slots, "%s: replication slots", name)
		require.Zero(t, subs, "%s: subscriptions", name)
		var databases []string
		rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%' ORDER BY 1")
		require.NoError(t, err)
		databases, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		want := []string{b.tenant.Database}
		if name == "pg-2" && !moved {
			want = nil
		}
		require.ElementsMatch(t, want, databases, "%s: tenant databases", name)
		require.NoError(t, conn.Close(ctx))
		if len(databases) > 0 {
			pub := b.adminConn(t, name)
			var pubs int
			require.NoError(t, pub.QueryRow(ctx, "SELECT count(*) FROM pg_publication").Scan(&pubs))
			require.Zero(t, pubs, "%s: publications", name)
		}
	}
	orphans, err := b.prov.Reconcile(ctx, false)
	require.NoError(t, err)
	require.Empty(t, orphans)
	leftovers, err := svc.Leftovers(ctx, false)
	require.NoError(t, err)
	require.Empty(t, leftovers)
}

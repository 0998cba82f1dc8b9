package mover_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// poolBundle is a moveBundle whose provisioner builds the embedded tenant
// schema (tenant_id in every key, forced row-level security), with a pool
// database on pg-1 and one on pg-2, and pooled tenants (plan free) in
// pg-1's, each with rows rows of users.
type poolBundle struct {
	*moveBundle
	pools   [2]catalog.PoolDatabase
	tenants map[string]string // slug → id
}

func setupPools(t *testing.T, rows int, slugs ...string) *poolBundle {
	t.Helper()
	ctx := testContext(t)
	b := &moveBundle{secret: catalog.NewKey(), dsn: pgtest.NewDB(t, catalogTemplate),
		servers: map[string]*pgtest.Server{"pg-1": pgtest.NewServer(t), "pg-2": pgtest.NewServer(t)},
		logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var err error
	b.store, err = openCatalog(ctx, b.dsn, b.secret)
	require.NoError(t, err)
	t.Cleanup(b.store.Close)
	b.prov, err = provisioner.New(b.store, provisioner.Config{Logger: b.logger, WarmPoolSize: -1})
	require.NoError(t, err)
	require.NoError(t, b.prov.Start(ctx))
	t.Cleanup(func() { _ = b.prov.Stop(context.Background()) })
	pb := &poolBundle{moveBundle: b, tenants: map[string]string{}}
	for i, name := range []string{"pg-1", "pg-2"} {
		_, err := b.prov.RegisterServer(ctx, provisioner.ServerSpec{Name: name, DSN: b.servers[name].ManagedDSN(t, "postgres")}, "test")
		require.NoError(t, err)
		pb.pools[i], err = b.prov.CreatePool(ctx, name, 10, "test")
		require.NoError(t, err)
		if i == 0 {
			// Placed once its pool is there: a pooled tenant is a catalog row.
			for _, slug := range slugs {
				tnt, _, err := b.prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: slug, Plan: "free"}, "test")
				require.NoError(t, err)
				require.Equal(t, pb.pools[0].Name, tnt.Pool)
				pb.tenants[slug] = tnt.ID
			}
		}
	}
	for _, id := range pb.tenants {
		pb.exec(t, 0, `INSERT INTO users (tenant_id, email) SELECT $1, 'u' || g || '@example.com' FROM generate_series(1, $2) g`, id, rows)
	}
	return pb
}

// exec runs sql in pool database i as its owner.
func (pb *poolBundle) exec(t *testing.T, i int, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), pb.servers[pb.pools[i].Server].ManagedDSN(t, pb.pools[i].Name))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(testContext(t), sql, args...)
	require.NoError(t, err)
}

// count is a count(*) in pool database i as its owner.
func (pb *poolBundle) count(t *testing.T, i int, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), pb.servers[pb.pools[i].Server].ManagedDSN(t, pb.pools[i].Name))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int64
	require.NoError(t, conn.QueryRow(testContext(t), sql, args...).Scan(&n))
	return n
}

// A repool whose process dies in each of its phases (the copy mode: these
// servers have wal_level = replica) is finished by the next one: the
// tenant in the target pool with its rows once, neither held nor moving,
// its neighbour's rows untouched, its rows kept fenced in the source pool
// for the keep.
func TestRepoolResumesAfterACrashInEachPhase(t *testing.T) {
	t.Parallel()
	for _, phase := range []string{mover.PhaseFenced, mover.PhaseCopying, mover.PhaseVerifying, mover.PhaseSwitched} {
		t.Run(phase, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			pb := setupPools(t, 200, "small-a", "small-b")
			reached := make(chan struct{})
			var once sync.Once
			svc, stop := pb.service(t, func(ctx context.Context, id int64, at string) error {
				if at != phase {
					return nil
				}
				once.Do(func() { close(reached) })
				<-ctx.Done() // the process dies here
				return ctx.Err()
			})
			m, err := svc.StartRepool(ctx, "small-a", mover.MoveSpec{Pool: pb.pools[1].ID}, "test")
			require.NoError(t, err)
			require.Equal(t, mover.KindRepool, m.Kind)
			require.Equal(t, mover.ModeCopy, m.Mode, m.ModeReason)
			require.Equal(t, pb.pools[0].Name, m.Pool)
			require.Equal(t, pb.pools[1].Name, m.ToPool)
			<-reached
			stop()

			svc2, _ := pb.service(t, nil)
			m = waitMove(t, svc2, m.ID)
			require.Equal(t, mover.PhaseDone, m.Phase, m.LastError)
			tnt, err := pb.store.GetTenant(ctx, "small-a")
			require.NoError(t, err)
			require.Equal(t, pb.pools[1].Name, tnt.Pool)
			require.Equal(t, "pg-2", tnt.Server)
			require.False(t, tnt.Held)
			require.Nil(t, tnt.MoveID)
			a, b := pb.tenants["small-a"], pb.tenants["small-b"]
			require.EqualValues(t, 200, pb.count(t, 1, `SELECT count(*) FROM users WHERE tenant_id = $1`, a))
			require.EqualValues(t, 200, pb.count(t, 1, `SELECT count(DISTINCT email) FROM users WHERE tenant_id = $1`, a))
			require.Zero(t, pb.count(t, 1, `SELECT count(*) FROM users WHERE tenant_id <> $1`, a), "only its rows went")
			require.EqualValues(t, 200, pb.count(t, 0, `SELECT count(*) FROM users WHERE tenant_id = $1`, b), "the neighbour's rows stay")
			require.EqualValues(t, 200, pb.count(t, 0, `SELECT count(*) FROM users WHERE tenant_id = $1`, a), "kept for the keep")
			require.Positive(t, pb.count(t, 0, `SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenantplane_fence_%'`), "kept fenced")
			require.Zero(t, pb.count(t, 1, `SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenantplane_fence_%'`), "no fence in the target")
		})
	}
}

// Repools out of one pool database run at once (an evacuation's, say):
// each holds the pool's migration lock shared. Two moves meet, both
// fenced, before either switches.
func TestRepoolsOutOfOnePoolRunAtOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pb := setupPools(t, 50, "small-a", "small-b")
	var fenced atomic.Int32 // moves in the hook, fenced, now
	var met atomic.Bool
	svc, _ := pb.service(t, func(ctx context.Context, id int64, at string) error {
		if at != mover.PhaseFenced {
			return nil
		}
		fenced.Add(1)
		defer fenced.Add(-1)
		deadline := time.Now().Add(15 * time.Second)
		for !met.Load() {
			if fenced.Load() >= 2 {
				met.Store(true)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("move %d fenced alone", id)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return nil
	})
	var ids []int64
	for _, slug := range []string{"small-a", "small-b"} {
		m, err := svc.StartMove(ctx, slug, mover.MoveSpec{To: "pg-2"}, "test")
		require.NoError(t, err)
		require.Equal(t, mover.KindRepool, m.Kind)
		ids = append(ids, m.ID)
	}
	for _, id := range ids {
		m := waitMove(t, svc, id)
		require.Equal(t, mover.PhaseDone, m.Phase, m.LastError)
	}
	require.True(t, met.Load(), "both moves were fenced at once")
	require.EqualValues(t, 100, pb.count(t, 1, `SELECT count(*) FROM users`))
}

package fanout

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// storeBundle is a migrated catalog of the test's own and fan-out's store on it.
type storeBundle struct {
	store *catalog.Store
	runs  *store
}

func setupStore(t *testing.T) *storeBundle {
	t.Helper()
	store, err := openCatalog(context.Background(), pgtest.NewDB(t, catalogTemplate), catalog.NewKey(), catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return &storeBundle{store: store, runs: newStore(store)}
}

// activeTenants records n active tenants on each of the named servers
// (registered here; nothing connects to them).
func activeTenants(t *testing.T, b *storeBundle, servers []string, n int) {
	t.Helper()
	ctx := context.Background()
	for _, name := range servers {
		_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: name, DSN: "postgres://u:p@127.0.0.1:1/postgres", Capacity: 1000, ConnBudget: 10})
		require.NoError(t, err)
	}
	for i := range n * len(servers) {
		tn, _, err := b.store.CreateTenant(ctx, catalog.NewTenant{Slug: fmt.Sprintf("tenant-%02d", i), Name: "t", Plan: "basic",
			Server: servers[i%len(servers)]}, nil)
		require.NoError(t, err)
		_, err = b.store.TransitionTenant(ctx, catalog.Transition{TenantID: tn.ID, From: []catalog.TenantState{catalog.TenantProvisioning},
			To: catalog.TenantActive, Action: "tenant.activated"})
		require.NoError(t, err)
	}
}

// claim claims as a new worker each time.
func claim(t *testing.T, b *storeBundle, run MigrationRun, lease time.Duration) (RunTenant, ClaimOutcome) {
	t.Helper()
	return claimAs(t, b, run, lease, fmt.Sprintf("test-%d", workers.Add(1)))
}

var workers atomic.Int64

func claimAs(t *testing.T, b *storeBundle, run MigrationRun, lease time.Duration, worker string) (RunTenant, ClaimOutcome) {
	t.Helper()
	rt, outcome, err := claimTenant(context.Background(), b.runs, ClaimRequest{RunID: run.ID, Generation: run.Generation, Worker: worker, Lease: lease})
	require.NoError(t, err)
	return rt, outcome
}

func finish(t *testing.T, b *storeBundle, rt RunTenant, state RunTenantState) (halted, stale bool) {
	t.Helper()
	v := rt.ToVersion
	halted, stale, err := finishTenant(context.Background(), b.runs, RunTenantResult{RunID: rt.RunID, TenantID: rt.TenantID,
		Owner: rt.LeaseOwner, State: state, Version: &v, Error: map[bool]string{true: "boom"}[state == RunTenantFailed]})
	require.NoError(t, err)
	return halted, stale
}

func TestRunClaimsKeepCanaryAndLimits(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	ctx := context.Background()
	activeTenants(t, b, []string{"pg-a", "pg-b"}, 3)
	enqueued := 0
	run, err := createRun(ctx, b.runs, NewMigrationRun{TargetVersion: 2, SchemaHash: "h", Concurrency: 3, PerServer: 1,
		Canary: -1, MaxFailures: 1, Actor: "test"}, func(ctx context.Context, tx pgx.Tx, run MigrationRun, slots int) error {
		enqueued = slots
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, enqueued)
	require.Equal(t, 2, run.Canary, "one per server")
	require.Equal(t, RunCounts{Total: 6, Pending: 6}, run.Counts)

	// The canary wave alone first, one per server.
	c1, o1 := claim(t, b, run, time.Minute)
	c2, o2 := claim(t, b, run, time.Minute)
	require.Equal(t, ClaimGot, o1)
	require.Equal(t, ClaimGot, o2)
	require.True(t, c1.Canary && c2.Canary)
	require.NotEqual(t, c1.Server, c2.Server)
	_, o := claim(t, b, run, time.Minute)
	require.Equal(t, ClaimWait, o, "the rest wait for the canaries")
	finish(t, b, c1, RunTenantDone)
	_, o = claim(t, b, run, time.Minute)
	require.Equal(t, ClaimWait, o, "all canaries must succeed first")
	finish(t, b, c2, RunTenantDone)

	// Then per_server 1: one a server, although concurrency is 3.
	c3, o3 := claim(t, b, run, time.Minute)
	c4, o4 := claim(t, b, run, time.Minute)
	require.Equal(t, ClaimGot, o3)
	require.Equal(t, ClaimGot, o4)
	require.NotEqual(t, c3.Server, c4.Server)
	_, o = claim(t, b, run, time.Minute)
	require.Equal(t, ClaimWait, o)

	// A worker claims only when it migrates nothing: one that claims again
	// before its lease ran out never got the answer to its claim (the
	// catalog reset under it), and gets its row back at once, though the
	// server's limit is reached; the lost claim no longer counts.
	again, o := claimAs(t, b, run, time.Minute, c4.Worker)
	require.Equal(t, ClaimGot, o)
	require.Equal(t, c4.TenantID, again.TenantID)
	require.Contains(t, again.Note, "claimed again by its worker")
	_, lost := finish(t, b, c4, RunTenantDone)
	require.True(t, lost, "the lost claim no longer counts")
	c4 = again

	// A failure within max_failures goes on; only the claim's owner records.
	forged := c3
	forged.LeaseOwner = "00000000-0000-0000-0000-000000000000"
	_, stale := finish(t, b, forged, RunTenantDone)
	require.True(t, stale)
	halted, stale := finish(t, b, c3, RunTenantFailed)
	require.False(t, halted)
	require.False(t, stale)

	// A claim whose lease runs out is taken over.
	c5, o5 := claim(t, b, run, 100*time.Millisecond)
	require.Equal(t, ClaimGot, o5)
	time.Sleep(150 * time.Millisecond)
	c6, o6 := claim(t, b, run, time.Minute)
	require.Equal(t, ClaimGot, o6)
	require.Equal(t, c5.TenantID, c6.TenantID)
	require.Equal(t, 2, c6.Attempts)
	require.Contains(t, c6.Note, "taken over from "+c5.Worker)
	_, stale = finish(t, b, c5, RunTenantDone)
	require.True(t, stale, "the old claim no longer counts")

	// A second failure is more than max_failures 1: halted, nothing more to take.
	halted, _ = finish(t, b, c6, RunTenantFailed)
	require.True(t, halted)
	_, o = claim(t, b, run, time.Minute)
	require.Equal(t, ClaimStop, o)
	finish(t, b, c4, RunTenantDone)
	got, err := b.runs.GetMigrationRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, RunHalted, got.State)
	require.Equal(t, "2 tenants failed, more than max_failures (1)", got.Reason)
	require.Equal(t, RunCounts{Total: 6, Done: 3, Failed: 2, Pending: 1}, got.Counts)

	// Resume: a new generation; the failed are pending again; the old generation stops.
	resumed, err := changeRun(ctx, b.runs, run.ID, RunResume, "test", func(ctx context.Context, tx pgx.Tx, r MigrationRun, slots int) error {
		enqueued = slots
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, run.Generation+1, resumed.Generation)
	require.Equal(t, RunCounts{Total: 6, Done: 3, Pending: 3}, resumed.Counts)
	require.Equal(t, 3, enqueued)
	_, o = claim(t, b, run, time.Minute)
	require.Equal(t, ClaimStop, o, "workers of the old generation stop")
	for range 3 {
		rt, o := claim(t, b, resumed, time.Minute)
		require.Equal(t, ClaimGot, o)
		finish(t, b, rt, RunTenantDone)
	}
	_, o = claim(t, b, resumed, time.Minute)
	require.Equal(t, ClaimFinished, o)
	got, err = b.runs.GetMigrationRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, RunDone, got.State)
	require.NotNil(t, got.FinishedAt)

	tn, err := b.store.GetTenant(ctx, "tenant-00")
	require.NoError(t, err)
	require.EqualValues(t, 2, tn.SchemaVersion, "the tenant's record follows its database")
}

func TestOneOpenRunAtATime(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	ctx := context.Background()
	activeTenants(t, b, []string{"pg-a"}, 2)
	nr := NewMigrationRun{TargetVersion: 2, SchemaHash: "h", Concurrency: 1, PerServer: 1, Canary: 0, Actor: "test"}
	first, err := createRun(ctx, b.runs, nr, nil)
	require.NoError(t, err)
	require.Zero(t, first.Canary)
	_, err = createRun(ctx, b.runs, nr, nil)
	require.ErrorIs(t, err, catalog.ErrConflict)
	require.Contains(t, err.Error(), fmt.Sprintf("run %d is running", first.ID))

	paused, err := changeRun(ctx, b.runs, first.ID, RunPause, "test", nil)
	require.NoError(t, err)
	require.Equal(t, RunPaused, paused.State)
	_, err = changeRun(ctx, b.runs, first.ID, RunPause, "test", nil)
	require.ErrorIs(t, err, catalog.ErrConflict)
	cancelled, err := changeRun(ctx, b.runs, first.ID, RunCancel, "test", nil)
	require.NoError(t, err)
	require.Equal(t, RunCounts{Total: 2, Skipped: 2}, cancelled.Counts)

	nr.Tenants = []string{"tenant-01", "tenant-01"}
	second, err := createRun(ctx, b.runs, nr, nil)
	require.NoError(t, err, "a cancelled run is not open")
	require.Equal(t, 1, second.Counts.Total)
	require.False(t, second.AllTenants)

	nr.Tenants = []string{"tenant-00", "ghost"}
	_, err = createRun(ctx, b.runs, nr, nil)
	require.ErrorIs(t, err, catalog.ErrInvalid)

	runs, _, err := b.runs.ListMigrationRuns(ctx, 0, "")
	require.NoError(t, err)
	require.Len(t, runs, 2)
	require.Equal(t, second.ID, runs[0].ID, "newest first")
}

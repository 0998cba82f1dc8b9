package mover_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// An evacuation tries a tenant whose move aborts again, a bounded number of
// times, keeping each attempt's move and error: moved on its third try
// after two aborted ones; failed, with both errors, when its two tries
// (max_attempts 2) abort.
func TestEvacuationRetriesAFailedTenant(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		failures    int // moves of the tenant aborted (cancelled as they copy)
		maxAttempts int
		moved       bool
	}{
		{name: "moved_on_the_third_try", failures: 2, maxAttempts: 0, moved: true},
		{name: "failed_after_its_tries", failures: 100, maxAttempts: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := setupMove(t, pgtest.NewServer(t))
			fillWrites(t, b, 100)
			var svc *mover.Service
			var tries atomic.Int32
			cfg := mover.Config{Logger: b.logger, Targets: b.prov, Keep: time.Hour}
			mover.SetEvacRetryDelay(&cfg, 100*time.Millisecond)
			mover.SetAfterPhase(&cfg, func(ctx context.Context, id int64, phase string) error {
				if phase == mover.PhaseCopying && int(tries.Add(1)) <= tc.failures {
					_, err := svc.Cancel(ctx, id, "test")
					return err
				}
				return nil
			})
			var err error
			svc, err = mover.New(b.store, cfg)
			require.NoError(t, err)
			require.NoError(t, svc.Start(context.Background()))
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = svc.Stop(ctx)
			})

			e, err := svc.Evacuate(ctx, "pg-1", mover.EvacuationSpec{Mode: mover.ModeCopy, MaxAttempts: tc.maxAttempts}, "test")
			require.NoError(t, err)
			want := tc.maxAttempts
			if want == 0 {
				want = 3 // the default
			}
			require.Equal(t, want, e.MaxAttempts)
			require.Eventually(t, func() bool {
				e, err = svc.GetEvacuation(ctx, e.ID)
				require.NoError(t, err)
				return e.FinishedAt != nil
			}, time.Minute, 50*time.Millisecond)
			require.Len(t, e.Tenants, 1)
			tnt := e.Tenants[0]
			require.Len(t, tnt.Attempts, 2, "%+v", tnt)
			seen := map[int64]bool{}
			for _, a := range tnt.Attempts {
				require.Equal(t, "cancelled", a.Error)
				require.NotNil(t, a.MoveID)
				require.False(t, seen[*a.MoveID], "each attempt is a move of its own")
				seen[*a.MoveID] = true
				m, err := svc.Get(ctx, *a.MoveID)
				require.NoError(t, err)
				require.Equal(t, mover.PhaseAborted, m.Phase)
			}
			cur, err := b.store.GetTenantByID(ctx, b.tenant.ID)
			require.NoError(t, err)
			if tc.moved {
				require.Equal(t, mover.EvacuationDone, e.State, e.LastError)
				require.Equal(t, mover.EvacTenantMoved, tnt.State, tnt.Error)
				require.Empty(t, tnt.Error)
				require.NotNil(t, tnt.MoveID)
				require.False(t, seen[*tnt.MoveID], "moved by a third move")
				require.Equal(t, "pg-2", cur.Server)
				require.EqualValues(t, 3, tries.Load())
				return
			}
			require.Equal(t, mover.EvacuationFailed, e.State)
			require.Equal(t, mover.EvacTenantFailed, tnt.State)
			require.Equal(t, "after 2 attempts: cancelled", tnt.Error)
			require.Equal(t, "pg-1", cur.Server)
			require.EqualValues(t, 2, tries.Load(), "no third try")
			checkAborted(t, b, 100)
		})
	}
}

package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The heartbeat's rescue of a dead process's jobs is shown end to end by
// the provisioner's kill tests (TestKilledProcessJobsResumeWithinSeconds,
// TestSlowClientKeepsItsJob), with real provisioning jobs.

// TestHeartbeatStartsOnce: a heartbeat runs once; Stop removes its row.
func TestHeartbeatStartsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	h, err := newClientHeartbeat(b.pool, newClientID(), heartbeatConfig{})
	require.NoError(t, err)
	require.NoError(t, h.Start(ctx))
	require.ErrorIs(t, h.Start(ctx), errHeartbeatStarted)
	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM job_clients WHERE id = $1`, h.id).Scan(&n))
	require.Equal(t, 1, n)
	require.NoError(t, h.Stop(ctx))
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM job_clients WHERE id = $1`, h.id).Scan(&n))
	require.Zero(t, n)
	require.ErrorIs(t, h.Start(ctx), errHeartbeatStarted)

	_, err = newClientHeartbeat(b.pool, newClientID(), heartbeatConfig{Interval: time.Second, DeadAfter: 2 * time.Second})
	require.Error(t, err, "a client must miss several beats before it counts as dead")
}

package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"
)

type pingArgs struct {
	N int `json:"n"`
}

func (pingArgs) Kind() string { return "tenantplane.test_ping" }

type pingWorker struct {
	river.WorkerDefaults[pingArgs]
	done chan int
}

func (w *pingWorker) Work(ctx context.Context, job *river.Job[pingArgs]) error {
	w.done <- job.Args.N
	return nil
}

// TestRegistryRunsEveryPartsWorkers: two parts register into one registry,
// each its worker in its own queue; the one client works both, beats while
// it runs, and forgets its row once stopped.
func TestRegistryRunsEveryPartsWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	reg := NewRegistry()
	first, second := &pingWorker{done: make(chan int, 1)}, &pingWorker{done: make(chan int, 1)}
	river.AddWorker(reg.Workers(), first)
	reg.AddQueue(river.QueueDefault, 2)
	river.AddWorker(reg.Workers(), river.WorkFunc(func(ctx context.Context, job *river.Job[otherPing]) error {
		second.done <- job.Args.N
		return nil
	}))
	reg.AddQueue("other", 1)
	reg.AddQueue("other", 3) // the larger bound wins

	require.Nil(t, reg.Client(), "no client before Open")
	require.ErrorIs(t, reg.Start(ctx), ErrNotOpen)
	require.NoError(t, reg.Stop(ctx), "stopping what never started does nothing")
	require.NoError(t, reg.Open(b.pool, Config{}))
	require.ErrorIs(t, reg.Open(b.pool, Config{}), ErrOpen)
	require.Equal(t, 3*time.Minute, reg.Config().RescueAfter, "defaults applied")
	require.Equal(t, 10, reg.Config().MaxAttempts)

	_, err := reg.Client().Insert(ctx, pingArgs{N: 1}, nil)
	require.NoError(t, err)
	_, err = reg.Client().Insert(ctx, otherPing{N: 2}, &river.InsertOpts{Queue: "other"})
	require.NoError(t, err)
	require.NoError(t, reg.Start(ctx))
	for _, w := range []*pingWorker{first, second} {
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			t.Fatal("a registered worker got no job within 30s")
		}
	}
	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM job_clients WHERE id = $1`, reg.Client().ID()).Scan(&n))
	require.Equal(t, 1, n, "the client beats while it runs")
	require.NoError(t, reg.Stop(ctx))
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM job_clients WHERE id = $1`, reg.Client().ID()).Scan(&n))
	require.Zero(t, n)
}

type otherPing struct {
	N int `json:"n"`
}

func (otherPing) Kind() string { return "tenantplane.test_other_ping" }

func TestOpenChecksTheConfig(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	err := reg.Open(nil, Config{JobTimeout: time.Minute, RescueAfter: time.Minute})
	require.ErrorContains(t, err, "RescueAfter must exceed JobTimeout")
	err = reg.Open(nil, Config{HeartbeatInterval: time.Second, ClientDeadAfter: 2 * time.Second})
	require.ErrorContains(t, err, "at least 3 HeartbeatIntervals")
}

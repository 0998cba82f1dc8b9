package startstop

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStartOnceStopWaits(t *testing.T) {
	t.Parallel()
	var l Loop
	require.NoError(t, l.Stop(context.Background()), "stopping a loop never started does nothing")
	var stopped atomic.Bool
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, l.Start(ctx, func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // work after the signal: Stop must wait for it
		stopped.Store(true)
	}))
	<-started
	cancel() // the starter's context ending does not stop the loop
	require.True(t, l.Running())
	require.ErrorIs(t, l.Start(context.Background(), func(context.Context) {}), ErrStarted)

	require.NoError(t, l.Stop(context.Background()))
	require.True(t, stopped.Load(), "Stop returned only after the loop did")
	require.False(t, l.Running())

	ran := make(chan struct{})
	require.NoError(t, l.Start(context.Background(), func(ctx context.Context) { close(ran); <-ctx.Done() }), "a stopped loop starts again")
	<-ran
	require.NoError(t, l.Stop(context.Background()))
}

func TestStopGivesUpWithItsContext(t *testing.T) {
	t.Parallel()
	var l Loop
	release := make(chan struct{})
	require.NoError(t, l.Start(context.Background(), func(context.Context) { <-release }))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := l.Stop(ctx)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	require.True(t, l.Running(), "still running: a later Stop waits for it")
	close(release)
	require.NoError(t, l.Stop(context.Background()))
}

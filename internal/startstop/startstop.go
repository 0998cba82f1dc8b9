// Package startstop is the one lifecycle every background loop of
// tenantplane has, after riverqueue/river's startstop: Start runs the loop in
// a goroutine once, Stop cancels it and waits for it to return, and a second
// Start while it runs is refused.
//
//	type refiller struct{ loop startstop.Loop }
//
//	func (r *refiller) Start(ctx context.Context) error { return r.loop.Start(ctx, r.run) }
//	func (r *refiller) Stop(ctx context.Context) error  { return r.loop.Stop(ctx) }
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrStarted is returned by Start on a loop that is running already.
var ErrStarted = errors.New("startstop: already started; Stop it first")

// Loop runs one background function at a time. Its zero value is ready to use.
type Loop struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs run in a goroutine with a context that Stop cancels. That
// context keeps ctx's values but not its cancellation: a loop lives until it
// is stopped, not until the request that started it ends. A loop that is
// running refuses a second Start with ErrStarted; once stopped it may start
// again.
func (l *Loop) Start(ctx context.Context, run func(ctx context.Context)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return ErrStarted
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	l.cancel, l.done = cancel, done
	go func() {
		defer close(done)
		run(runCtx)
	}()
	return nil
}

// Stop cancels the loop's context and waits for run to return, or for ctx
// to end (then it returns ctx's error and the loop finishes on its own).
// Stopping a loop that is not running does nothing.
func (l *Loop) Stop(ctx context.Context) error {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	l.mu.Lock()
	if l.done == done {
		l.cancel, l.done = nil, nil
	}
	l.mu.Unlock()
	return nil
}

// Running reports whether the loop has been started and not stopped.
func (l *Loop) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done != nil
}

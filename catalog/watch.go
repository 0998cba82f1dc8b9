package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/internal/startstop"
)

// Watcher listens on TenantChannel over one catalog connection and fans each
// change out to in-process subscribers, so that any number of waiters and
// caches learn of a tenant's change at once without polling the catalog.
// When the connection drops it reconnects with backoff, and tells every
// subscriber "everything may have changed" (an empty tenant id) once it is
// back, since notifications sent meanwhile are lost.
type Watcher struct {
	pool   *pgxpool.Pool
	logger *slog.Logger

	mu   sync.Mutex
	subs map[chan string]struct{}

	loop startstop.Loop
}

// NewWatcher returns a Watcher on the store's catalog. Start it to listen.
func NewWatcher(s *Store, logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.Default()
	}
	return &Watcher{pool: s.pool, logger: logger, subs: map[chan string]struct{}{}}
}

// Subscribe returns a channel that receives the id of each changed tenant
// ("" for "reload everything"), and a function that ends the subscription.
// A subscriber that falls behind misses ids rather than stalling others, and
// is sent "" instead.
func (w *Watcher) Subscribe() (<-chan string, func()) {
	ch := make(chan string, 256)
	w.mu.Lock()
	w.subs[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subs, ch)
		w.mu.Unlock()
	}
}

func (w *Watcher) publish(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subs {
		select {
		case ch <- id:
		default:
			// Full: drop one and say "reload everything" instead.
			select {
			case <-ch:
			default:
			}
			select {
			case ch <- "":
			default:
			}
		}
	}
}

// Start listens in the background until Stop. A Watcher that is listening
// refuses a second Start with startstop.ErrStarted.
func (w *Watcher) Start(ctx context.Context) error {
	if err := w.loop.Start(ctx, w.run); err != nil {
		return fmt.Errorf("catalog watcher: %w", err)
	}
	return nil
}

// Stop stops listening and waits for the listener to end, which it does as
// soon as its connection's wait is cancelled.
func (w *Watcher) Stop() {
	_ = w.loop.Stop(context.Background()) // without a deadline, Stop only returns nil
}

func (w *Watcher) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := w.listen(ctx, !first)
		first = false
		if ctx.Err() != nil {
			return
		}
		w.logger.WarnContext(ctx, "catalog listener lost; reconnecting", "error", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// After listenCheckAfter without a notification the listening connection
// must answer a query within listenCheckTimeout.
const (
	listenCheckAfter   = 5 * time.Second
	listenCheckTimeout = 2 * time.Second
)

// listen holds one connection in LISTEN until it fails.
func (w *Watcher) listen(ctx context.Context, resumed bool) error {
	connectCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	pooled, err := w.pool.Acquire(connectCtx)
	cancel()
	if err != nil {
		return err
	}
	// The connection will be in LISTEN state: it must never go back to the pool.
	conn := pooled.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+TenantChannel); err != nil {
		return err
	}
	if resumed {
		w.publish("") // changes made while we were away were not heard
	}
	for {
		// A connection whose wire hangs (a partition, a catalog that
		// stopped) would wait here for ever, and every change made
		// meanwhile would be missed: after a quiet spell, the connection
		// must answer a query, or it is given up and a new one listens
		// (and says that changes may have been missed).
		wctx, cancel := context.WithTimeout(ctx, listenCheckAfter)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && wctx.Err() != nil {
			pctx, cancel := context.WithTimeout(ctx, listenCheckTimeout)
			_, err = conn.Exec(pctx, "SELECT 1")
			cancel()
			if err != nil {
				return fmt.Errorf("the listening connection does not answer: %w", err)
			}
			continue
		}
		if err != nil {
			return err
		}
		w.publish(n.Payload)
	}
}

package router

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

// meter counts each tenant's requests as api_calls in memory and flushes
// them to the catalog in batches. Each batch carries a unique id and is
// retried as is until the catalog takes it, so a retried flush never counts
// twice; a crash loses at most the counts of one flush interval.
type meter struct {
	store    *catalog.Store
	logger   *slog.Logger
	interval time.Duration

	mu       sync.Mutex
	counts   map[meterKey]int64
	pending  []usageBatch         // flushed but not yet accepted, oldest first
	keysUsed map[string]time.Time // API key id -> last use, for the keys' last_used_at

	flushMu sync.Mutex           // one flush at a time
	touched map[string]time.Time // API key id -> the use last written to last_used_at; guarded by flushMu
	loop    startstop.Loop

	flushed prometheus.Counter
}

type meterKey struct {
	tenantID string
	hour     time.Time
}

type usageBatch struct {
	id   string
	rows []catalog.UsageRow
}

// flushTimeout bounds one flush of the loop.
const flushTimeout = 5 * time.Second

func newMeter(store *catalog.Store, logger *slog.Logger, interval time.Duration, reg prometheus.Registerer) *meter {
	m := &meter{store: store, logger: logger, interval: interval, counts: map[meterKey]int64{}, keysUsed: map[string]time.Time{}, touched: map[string]time.Time{},
		flushed: prometheus.NewCounter(prometheus.CounterOpts{Name: "tenantplane_router_api_calls_flushed_total", Help: "api_calls written to the catalog."})}
	if reg != nil {
		reg.MustRegister(m.flushed)
	}
	return m
}

func (m *meter) count(tenantID, keyID string) {
	now := time.Now().UTC()
	k := meterKey{tenantID, now.Truncate(time.Hour)}
	m.mu.Lock()
	m.counts[k]++
	m.keysUsed[keyID] = now
	m.mu.Unlock()
}

// start flushes every interval until stop.
func (m *meter) start(ctx context.Context) error {
	return m.loop.Start(ctx, m.run)
}

func (m *meter) run(ctx context.Context) {
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			// Bounded: a catalog that hangs fails the flush, which the next
			// tick retries with the same batch ids, instead of stopping
			// metering for good.
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			err := m.flush(fctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				m.logger.WarnContext(ctx, "usage flush failed; it will be retried", "error", err)
			}
		}
	}
}

// stop ends the loop and flushes what is left, until ctx ends. A flush the
// loop was doing when ctx ended finishes first: one flush runs at a time.
func (m *meter) stop(ctx context.Context) error {
	return errors.Join(m.loop.Stop(ctx), m.flush(ctx))
}

// flush turns the counts into a batch and writes every pending batch, oldest
// first; a batch that fails stays pending with its id.
func (m *meter) flush(ctx context.Context) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	m.mu.Lock()
	if len(m.counts) > 0 {
		b := usageBatch{id: newBatchID()}
		for k, n := range m.counts {
			b.rows = append(b.rows, catalog.UsageRow{TenantID: k.tenantID, Meter: catalog.MeterAPICalls, Bucket: k.hour, Quantity: n})
		}
		m.counts = map[meterKey]int64{}
		m.pending = append(m.pending, b)
	}
	pending := m.pending
	used := m.keysUsed
	m.keysUsed = map[string]time.Time{}
	m.mu.Unlock()
	if err := m.touchKeys(ctx, used); err != nil {
		m.logger.WarnContext(ctx, "recording API key use failed", "error", err)
	}
	if n, err := m.store.RecordExpiredKeys(ctx); err != nil {
		m.logger.WarnContext(ctx, "recording expired API keys failed; the next flush tries again", "error", err)
	} else if n > 0 {
		m.logger.InfoContext(ctx, "expired API keys recorded in the audit log", "keys", n)
	}
	for i, b := range pending {
		err := m.store.RecordUsageBatch(ctx, b.id, b.rows)
		if catalog.CodeOf(err) == catalog.CodeInvalid {
			// The catalog will never take it (a tenant gone from it): retrying
			// would stall every batch behind it.
			m.logger.ErrorContext(ctx, "usage batch refused by the catalog; dropped", "batch", b.id, "rows", len(b.rows), "error", err)
			continue
		}
		if err != nil {
			m.mu.Lock()
			m.pending = m.pending[i:]
			m.mu.Unlock()
			return err
		}
		var n int64
		for _, r := range b.rows {
			n += r.Quantity
		}
		m.flushed.Add(float64(n))
	}
	m.mu.Lock()
	m.pending = m.pending[len(pending):]
	m.mu.Unlock()
	return nil
}

// keyTouchEvery is how often a key in use has its last_used_at written: to
// the minute, not a row update per key on every flush.
const keyTouchEvery = time.Minute

// touchKeys records when keys were last used, each at most once a
// keyTouchEvery; at-most-once is enough here. Called under flushMu.
func (m *meter) touchKeys(ctx context.Context, used map[string]time.Time) error {
	ids := make([]string, 0, len(used))
	var latest time.Time
	for id, at := range used {
		if at.Sub(m.touched[id]) < keyTouchEvery {
			continue
		}
		ids = append(ids, id)
		if at.After(latest) {
			latest = at
		}
	}
	for id, at := range m.touched {
		if time.Since(at) >= keyTouchEvery {
			delete(m.touched, id) // its next use is written anyway
		}
	}
	if len(ids) == 0 {
		return nil
	}
	if err := m.store.TouchAPIKeys(ctx, ids, latest); err != nil {
		return err
	}
	for _, id := range ids {
		m.touched[id] = used[id]
	}
	return nil
}

func newBatchID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "router-" + hex.EncodeToString(b)
}

package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// The pooled tier. A pooled tenant's rows live in a pool database shared
// with other tenants; the router reaches it through one pgxpool per pool
// database (in the same LRU and under the same server budget as tenant
// pools), connecting as the pool's own role, which owns nothing there and
// cannot bypass row-level security. Every request that uses the database
// runs in one transaction that begins by naming its tenant with
// set_config(..., true): transaction-local, so it ends with the transaction
// and can never reach the next request on that connection. The policies of
// the tenant schema (migrations/sql/000002) show and take only that tenant's
// rows; without the setting, none. The transaction commits before the first
// byte of the answer is written (txWriter), so a 2xx is only ever sent for
// writes that are committed.

// tenantSettingSQL begins a pooled request's transaction: one round trip
// (simple protocol) that opens it, names the tenant and bounds its statements.
const tenantSettingSQL = `BEGIN; SELECT set_config('tenantplane.tenant_id', '%s', true), set_config('statement_timeout', '%d', true)`

// isUUID says whether s is a UUID in its canonical lower-case text, the
// only form the catalog's tenant ids take: checked before an id is written
// into SQL text. By hand, as a regular expression costs a microsecond on
// every pooled request.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		switch c := s[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		default:
			return false
		}
	}
	return true
}

// cacheKey is the key of the pool a tenant's requests use: its own, or its
// pool database's, shared by all of that pool's tenants.
func (e *resolved) cacheKey() string {
	if e.tenant.PoolID != 0 {
		return "pool:" + strconv.FormatInt(e.tenant.PoolID, 10)
	}
	return e.tenant.ID
}

// slots caps the connections of a pool database one tenant holds at once
// (its plan's max_conns), so one noisy tenant cannot take the pool.
type slots struct {
	mu    sync.Mutex
	byTen map[string]*tenantSlots
}

type tenantSlots struct {
	ch    chan struct{}
	users int // requests holding or waiting for a slot; guarded by slots.mu
}

// take reserves one of the tenant's n slots, waiting until ctx ends.
func (s *slots) take(ctx context.Context, tenantID string, n int) (*tenantSlots, error) {
	n = max(1, n)
	s.mu.Lock()
	if s.byTen == nil {
		s.byTen = map[string]*tenantSlots{}
	}
	ts, ok := s.byTen[tenantID]
	if !ok || (cap(ts.ch) != n && ts.users == 0) {
		ts = &tenantSlots{ch: make(chan struct{}, n)}
		s.byTen[tenantID] = ts
	}
	ts.users++
	s.mu.Unlock()
	select { // a free slot, without waking ctx's machinery
	case ts.ch <- struct{}{}:
		return ts, nil
	default:
	}
	select {
	case ts.ch <- struct{}{}:
		return ts, nil
	case <-ctx.Done():
		s.done(tenantID, ts, false)
		return nil, ctx.Err()
	}
}

// done gives a slot back (held) or stops waiting for one, and forgets a
// tenant nobody uses any more.
func (s *slots) done(tenantID string, ts *tenantSlots, held bool) {
	if held {
		<-ts.ch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ts.users--
	if ts.users == 0 && s.byTen[tenantID] == ts {
		delete(s.byTen, tenantID)
	}
}

// pooledDB gives a pooled tenant's request a connection of its pool
// database's pool, inside a transaction that names the tenant, within the
// tenant's slots.
func (r *Router) pooledDB(c *gin.Context, e *resolved) (*pgxpool.Conn, error) {
	if !isUUID(e.tenant.ID) {
		return nil, catalog.Errorf(catalog.CodeInternal, "tenant id %q is not a UUID", e.tenant.ID)
	}
	wait, cancel := context.WithTimeout(c.Request.Context(), r.cfg.AcquireTimeout) // not c: its Value takes a lock
	defer cancel()
	ts, err := r.slots.take(wait, e.tenant.ID, e.plan.MaxConns)
	if err != nil {
		c.Header("Retry-After", "1")
		return nil, catalog.Errorf(catalog.CodeRateLimited, "tenant %q has %d requests using its database at once, the most its plan %q allows; retry shortly",
			e.tenant.Slug, max(1, e.plan.MaxConns), e.plan.Name)
	}
	tp, err := r.pools.acquire(c, e)
	if err != nil {
		r.slots.done(e.tenant.ID, ts, true)
		return nil, unavailable(e, err)
	}
	conn, err := tp.pool.Acquire(wait)
	if err == nil {
		err = conn.Conn().PgConn().Exec(wait, fmt.Sprintf(tenantSettingSQL, e.tenant.ID, r.cfg.PooledStatementTimeout.Milliseconds())).Close()
		if err != nil {
			conn.Conn().Close(context.Background()) //nolint:errcheck // the pool drops a closed connection
			conn.Release()
		}
	}
	if err != nil {
		r.pools.release(tp)
		r.slots.done(e.tenant.ID, ts, true)
		return nil, unavailable(e, err)
	}
	h := &held{tp: tp, conn: conn, tx: true, slots: ts, tenantID: e.tenant.ID}
	h.txw = txWriter{ResponseWriter: c.Writer, h: h, logger: r}
	h.writer = &h.txw
	c.Set(poolKey, h)
	c.Writer = h.writer
	return conn, nil
}

// endTx ends a pooled request's transaction, once: COMMIT when the answer
// is a success, ROLLBACK otherwise. A connection left in any state but idle
// is closed, never returned to the pool with a transaction (and so a tenant
// setting) open.
func (h *held) endTx(ctx context.Context, status int) error {
	if h.ended {
		return h.endErr
	}
	h.ended = true
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	pg := h.conn.Conn().PgConn()
	stmt := "COMMIT"
	if status >= 400 || pg.TxStatus() == 'E' {
		stmt = "ROLLBACK"
	}
	tag, err := pg.Exec(ctx, stmt).ReadAll()
	switch {
	case err != nil:
		h.endErr = err
	case stmt == "COMMIT" && len(tag) == 1 && tag[0].CommandTag.String() == "ROLLBACK":
		// The transaction had failed: Postgres answers COMMIT with ROLLBACK.
		h.endErr = fmt.Errorf("the transaction was rolled back")
	}
	if pg.TxStatus() != 'I' || h.endErr != nil {
		h.conn.Conn().Close(ctx) //nolint:errcheck // the pool drops a closed connection
	}
	return h.endErr
}

// txWriter commits a pooled request's transaction before the first byte of
// its answer is written; when the commit fails, the answer becomes a 503
// and the handler's body is dropped.
type txWriter struct {
	gin.ResponseWriter
	h      *held
	logger *Router
	failed bool
}

func (w *txWriter) settle() {
	if w.h.ended {
		return
	}
	if err := w.h.endTx(context.Background(), w.Status()); err != nil && w.Status() < 400 {
		w.failed = true
		w.logger.cfg.Logger.Warn("pooled request's transaction did not commit", "tenant_id", w.h.tenantID, "error", err)
		body, _ := json.Marshal(httpapi.ErrorBody{Error: httpapi.ErrorDetail{Code: string(catalog.CodeUnavailable),
			Message: "the tenant database did not commit the change; nothing was changed, retry"}})
		w.ResponseWriter.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.ResponseWriter.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.ResponseWriter.Write(body)
	}
}

func (w *txWriter) Write(b []byte) (int, error) {
	w.settle()
	if w.failed {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

func (w *txWriter) WriteString(s string) (int, error) {
	w.settle()
	if w.failed {
		return len(s), nil
	}
	return w.ResponseWriter.WriteString(s)
}

func (w *txWriter) WriteHeaderNow() {
	w.settle()
	if !w.failed {
		w.ResponseWriter.WriteHeaderNow()
	}
}

func (w *txWriter) Flush() {
	w.settle()
	w.ResponseWriter.Flush()
}

// releaseHeld ends what a request held: its transaction (answering 503 if a
// success could not commit and nothing was written yet), its connection, its
// pool and its slot.
func (r *Router) releaseHeld(c *gin.Context, h *held) {
	if h.done != nil {
		h.done()
	}
	if h.tx {
		if h.writer != nil {
			h.writer.settle()
			c.Writer = h.writer.ResponseWriter
		}
		_ = h.endTx(c, c.Writer.Status())
	}
	h.conn.Release()
	if h.tp != nil {
		r.pools.release(h.tp)
	}
	if h.slots != nil {
		r.slots.done(h.tenantID, h.slots, true)
	}
}

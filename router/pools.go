package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/tenantplane/tenantplane/catalog"
)

// PoolConfig tunes the per-tenant pools. A zero field takes its documented
// default; none of these settings can be off.
type PoolConfig struct {
	// CacheSize bounds how many tenant pools are open at once
	// (TENANTPLANE_POOL_CACHE_SIZE). Default 500.
	CacheSize int
	// Replicas is how many processes share each server's connection budget
	// (TENANTPLANE_REPLICAS): this one holds conn_budget / Replicas of it, at
	// least one connection. Default 1.
	Replicas int
	// ConnectTimeout bounds opening one connection to a tenant database. Default 2s.
	ConnectTimeout time.Duration
	// BudgetWait bounds how long a request waits for a server's connection
	// budget before it answers 503. Default 1s.
	BudgetWait time.Duration
	// MaxConnIdleTime closes a tenant's idle connections. Default 1 minute.
	MaxConnIdleTime time.Duration
	// MaxConnLifetime recycles connections. Default 30 minutes.
	MaxConnLifetime time.Duration
	// PoolDatabaseConns is the size of the pool this process keeps on each
	// pool database, shared by its pooled tenants (each within its plan's
	// max_conns of it), within the server's budget. Default 20.
	PoolDatabaseConns int
}

func (c *PoolConfig) setDefaults() {
	if c.CacheSize == 0 {
		c.CacheSize = 500
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 2 * time.Second
	}
	if c.BudgetWait == 0 {
		c.BudgetWait = time.Second
	}
	if c.MaxConnIdleTime == 0 {
		c.MaxConnIdleTime = time.Minute
	}
	if c.MaxConnLifetime == 0 {
		c.MaxConnLifetime = 30 * time.Minute
	}
	if c.PoolDatabaseConns == 0 {
		c.PoolDatabaseConns = 20
	}
}

// tenantPool is one tenant's pgxpool, or one pool database's, and the
// requests using it.
type tenantPool struct {
	key      string // the tenant's id, or pool:<id>
	tenantID string
	serverID int64
	pool     *pgxpool.Pool
	connCfg  *pgx.ConnConfig // how its connections are made: what a probe of the server uses
	refs     int             // requests holding it; guarded by pools.mu
	evicted  bool            // out of the cache: closed when refs reaches 0; guarded by pools.mu
}

// pools holds one pgxpool per tenant in a bounded LRU. The LRU and the
// reference counts share one mutex, so a pool found in the cache cannot be
// closed before the request that found it has counted itself in; an evicted
// pool is closed, off the request path, once its last request releases it.
type pools struct {
	cfg    PoolConfig
	store  *catalog.Store
	logger *slog.Logger

	mu    sync.Mutex
	cache *simplelru.LRU[string, *tenantPool]

	opening singleflight.Group // concurrent misses for one tenant open one pool
	closing sync.WaitGroup

	budgetMu sync.Mutex
	budgets  map[int64]*budget // by server id

	opened, closed prometheus.Counter
	size           prometheus.GaugeFunc
}

// budget bounds the connections all tenant pools hold on one server. Its
// size changes while it is in use (an operator changed the server's
// conn_budget): a smaller one is reached as connections are closed, since
// none is opened, and none returned to a pool, while over it.
type budget struct {
	mu   sync.Mutex
	size int64
	used int64
	free chan struct{} // closed, and replaced, whenever a place may have freed

	open atomic.Int64
	peak atomic.Int64
}

func newBudget(size int64) *budget {
	return &budget{size: size, free: make(chan struct{})}
}

// tryTake reserves one connection if one is free.
func (b *budget) tryTake() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used < b.size {
		b.used++
		return true
	}
	return false
}

// take reserves one connection, waiting until ctx ends.
func (b *budget) take(ctx context.Context) error {
	for {
		b.mu.Lock()
		if b.used < b.size {
			b.used++
			b.mu.Unlock()
			return nil
		}
		free := b.free
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-free:
		}
	}
}

// wake tells waiters a place may be free; b.mu is held.
func (b *budget) wake() {
	close(b.free)
	b.free = make(chan struct{})
}

// resize sets the budget's size; it reports whether connections are over it.
func (b *budget) resize(size int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.size = size
	b.wake()
	return b.used > b.size
}

// over reports whether more connections are open than the budget allows.
func (b *budget) over() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used > b.size
}

func newPools(cfg PoolConfig, store *catalog.Store, logger *slog.Logger, reg prometheus.Registerer) *pools {
	cfg.setDefaults()
	p := &pools{cfg: cfg, store: store, logger: logger, budgets: map[int64]*budget{}}
	p.cache, _ = simplelru.NewLRU(cfg.CacheSize, p.onEvict) // size > 0 always
	p.opened = prometheus.NewCounter(prometheus.CounterOpts{Name: "tenantplane_router_pools_opened_total", Help: "Tenant pools opened."})
	p.closed = prometheus.NewCounter(prometheus.CounterOpts{Name: "tenantplane_router_pools_closed_total", Help: "Tenant pools closed."})
	p.size = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tenantplane_router_pools_cached", Help: "Tenant pools in the cache."},
		func() float64 { p.mu.Lock(); defer p.mu.Unlock(); return float64(p.cache.Len()) })
	if reg != nil {
		reg.MustRegister(p.opened, p.closed, p.size)
	}
	return p
}

// onEvict runs under p.mu, inside the LRU operation that evicted tp.
func (p *pools) onEvict(_ string, tp *tenantPool) {
	tp.evicted = true
	if tp.refs == 0 {
		p.closeLater(tp)
	}
}

// closeLater closes a pool in the background: pgxpool.Close waits for
// connections in use, and no request should wait for that.
func (p *pools) closeLater(tp *tenantPool) {
	p.closing.Add(1)
	go func() {
		defer p.closing.Done()
		tp.pool.Close()
		p.closed.Inc()
	}()
}

// acquire returns the tenant's pool, opening it on a miss, counted as in use
// until release is called.
func (p *pools) acquire(ctx context.Context, t *resolved) (*tenantPool, error) {
	key := t.cacheKey()
	if tp := p.lookup(key); tp != nil {
		return tp, nil
	}
	// Open it once however many requests miss together, on a context no
	// single caller can cancel for the others.
	_, err, _ := p.opening.Do(key, func() (any, error) {
		p.mu.Lock()
		cached := p.cache.Contains(key)
		p.mu.Unlock()
		if cached {
			return nil, nil // opened by a flight that just ended
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		pool, err := p.open(ctx, t)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		// Add on a present key would replace the value without the eviction
		// callback, leaking the old pool: remove first, which retires it.
		p.cache.Remove(key)
		p.cache.Add(key, &tenantPool{key: key, tenantID: t.tenant.ID, serverID: t.tenant.ServerID, pool: pool, connCfg: pool.Config().ConnConfig})
		p.mu.Unlock()
		p.opened.Inc()
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	if tp := p.lookup(key); tp != nil {
		return tp, nil
	}
	// Evicted between opening and now, under heavy churn: open again.
	return p.acquire(ctx, t)
}

// lookup finds a cached pool and counts the caller in, atomically with
// respect to eviction.
func (p *pools) lookup(tenantID string) *tenantPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	tp, ok := p.cache.Get(tenantID)
	if !ok {
		return nil
	}
	tp.refs++
	return tp
}

func (p *pools) release(tp *tenantPool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	tp.refs--
	if tp.refs == 0 && tp.evicted {
		p.closeLater(tp)
	}
}

// drop evicts a tenant's pool (its credentials changed, or it was deleted).
func (p *pools) drop(tenantID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cache.Remove(tenantID)
}

// purge evicts every pool and waits until all are closed.
func (p *pools) purge() {
	p.mu.Lock()
	p.cache.Purge()
	p.mu.Unlock()
	p.closing.Wait()
}

// open makes a pool that connects as the tenant's own role to its own
// database, within its server's connection budget.
func (p *pools) open(ctx context.Context, t *resolved) (*pgxpool.Pool, error) {
	serverDSN, err := p.store.ServerDSN(ctx, t.tenant.Server)
	if err != nil {
		return nil, err
	}
	database, maxConns := t.tenant.Database, t.plan.MaxConns
	var role, password string
	if t.tenant.PoolID != 0 {
		// A pool database's role, shared by its tenants: never one that
		// owns anything there or may bypass row-level security.
		database, maxConns = t.tenant.Pool, p.cfg.PoolDatabaseConns
		role, password, err = p.store.PoolCredentials(ctx, t.tenant.PoolID)
	} else {
		role, password, err = p.store.TenantCredentials(ctx, t.tenant.ID)
	}
	if err != nil {
		return nil, err
	}
	cfg, err := catalog.ServerConfig(serverDSN)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", t.tenant.Server, err)
	}
	cc := cfg.ConnConfig
	cc.User, cc.Password, cc.Database = role, password, database
	cc.ConnectTimeout = p.cfg.ConnectTimeout
	cc.RuntimeParams["application_name"] = "tenantplane-router"
	cc.Fallbacks = nil
	cfg.MaxConns = int32(max(1, maxConns))
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = p.cfg.MaxConnIdleTime
	cfg.MaxConnLifetime = p.cfg.MaxConnLifetime
	cfg.HealthCheckPeriod = 30 * time.Second
	b := p.budget(t.tenant.ServerID, t.serverBudget)
	// A connection released while its server is over a budget made smaller
	// is closed instead of kept idle.
	cfg.AfterRelease = func(*pgx.Conn) bool { return !b.over() }
	dial := cc.DialFunc
	cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := p.takeBudget(ctx, b, t.tenant.ServerID); err != nil {
			return nil, err
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			b.give()
			return nil, err
		}
		return &budgetConn{Conn: conn, b: b}, nil
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// budget is this process's share of a server's connection budget of size.
func (p *pools) budget(serverID int64, size int) *budget {
	p.budgetMu.Lock()
	defer p.budgetMu.Unlock()
	b, ok := p.budgets[serverID]
	if !ok {
		b = newBudget(p.share(size))
		p.budgets[serverID] = b
	}
	return b
}

// share is this process's part of a server's conn_budget.
func (p *pools) share(connBudget int) int64 {
	return int64(max(1, connBudget/p.cfg.Replicas))
}

// setBudget applies a server's new conn_budget to the pools open on it at
// once: a larger one lets waiting requests connect, a smaller one closes idle
// connections until the server is within it (connections in use close when
// their request releases them).
func (p *pools) setBudget(serverID int64, connBudget int) {
	p.budgetMu.Lock()
	b, ok := p.budgets[serverID]
	if !ok {
		b = newBudget(p.share(connBudget))
		p.budgets[serverID] = b
	}
	p.budgetMu.Unlock()
	if ok && b.resize(p.share(connBudget)) {
		for b.over() && p.releaseIdle(serverID) {
		}
	}
}

// errBudget is a server whose connection budget stayed exhausted.
var errBudget = errors.New("connection budget exhausted")

// takeBudget reserves one connection on a server. When none is free it
// first has the least recently used pools on that server let go of their
// idle connections, then waits a bounded time.
func (p *pools) takeBudget(ctx context.Context, b *budget, serverID int64) error {
	if !b.tryTake() {
		p.releaseIdle(serverID)
		ctx, cancel := context.WithTimeout(ctx, p.cfg.BudgetWait)
		defer cancel()
		if err := b.take(ctx); err != nil {
			return errBudget
		}
	}
	n := b.open.Add(1)
	for {
		peak := b.peak.Load()
		if n <= peak || b.peak.CompareAndSwap(peak, n) {
			break
		}
	}
	return nil
}

func (b *budget) give() {
	b.open.Add(-1)
	b.mu.Lock()
	b.used--
	b.wake()
	b.mu.Unlock()
}

// releaseIdle closes the idle connections of the least recently used pools
// on a server, oldest first, until one connection is freed; it reports
// whether it freed any.
func (p *pools) releaseIdle(serverID int64) bool {
	p.mu.Lock()
	var victims []*tenantPool
	for _, tp := range p.cache.Values() { // oldest first
		if tp.serverID == serverID && tp.pool.Stat().IdleConns() > 0 {
			victims = append(victims, tp)
		}
	}
	p.mu.Unlock()
	for _, tp := range victims {
		if idle := tp.pool.AcquireAllIdle(context.Background()); len(idle) > 0 {
			for _, c := range idle {
				c.Conn().Close(context.Background()) //nolint:errcheck // closing frees the budget
				c.Release()
			}
			return true
		}
	}
	return false
}

// budgetConn gives its connection's place in the budget back when closed.
type budgetConn struct {
	net.Conn
	b    *budget
	once sync.Once
}

// closeWait bounds how long closing a connection waits for the server to
// close its end before its place in the budget is given back anyway.
const closeWait = 250 * time.Millisecond

// Close gives the connection's place back once the server has closed its
// end. pgconn has sent Terminate by now; the backend closes its socket as it
// exits, after it has left pg_stat_activity, so the server never counts more
// of our connections than the budget, not even while a backend exits (it
// could, for a few milliseconds on a busy machine, when the place was given
// back as the client let go).
func (c *budgetConn) Close() error {
	var err error
	c.once.Do(func() {
		defer c.b.give()
		if c.Conn.SetReadDeadline(time.Now().Add(closeWait)) == nil {
			_, _ = io.Copy(io.Discard, c.Conn) // until EOF, an error, or the deadline
		}
		err = c.Conn.Close()
	})
	return err
}

package router

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/stall"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

// Config configures the tenant API. As in every tenantplane Config, a zero
// field takes its documented default; none of these settings can be off.
type Config struct {
	// Store is the catalog. Required.
	Store *catalog.Store
	// Watcher brings the catalog's changes (suspend, delete, key revocation,
	// credentials) to the caches at once. Required.
	Watcher *catalog.Watcher
	// Ready reports whether the dependencies answer, for GET /readyz. Required.
	Ready func(context.Context) error
	// Logger receives one line per request. Default slog.Default().
	Logger *slog.Logger
	// Metrics counts requests; optional.
	Metrics *httpapi.Metrics
	// Registerer receives the router's own metrics (pools, usage); optional.
	Registerer prometheus.Registerer
	// Pools tunes the per-tenant pools.
	Pools PoolConfig
	// FlushInterval is how often usage counters are written to the catalog;
	// a crash loses at most this much metering. Default 5s.
	FlushInterval time.Duration
	// RequestTimeout bounds one tenant request, database work included. Default 10s.
	RequestTimeout time.Duration
	// AcquireTimeout bounds waiting for a connection of the tenant's pool, so
	// a tenant whose server is down or saturated gets 503 fast. Default 1.8s.
	AcquireTimeout time.Duration
	// NegativeTTL is how long an unknown key is remembered as unknown. Default 10s.
	NegativeTTL time.Duration
	// TrustedProxies are the networks of the proxies in front of the tenant
	// API whose X-Forwarded-For is believed, for tenants' IP allowlists.
	// Default none: the client is the socket's peer, whatever the headers say.
	TrustedProxies []netip.Prefix
	// TenantDomain, when set, serves each tenant at a host of its own:
	// tenant acme at acme.<TenantDomain>. A request there must carry a key
	// of that tenant; another tenant's key answers as an unknown key does,
	// and a host that names no tenant 404. Other hosts route by key alone.
	// Default "": every host routes by key alone.
	TenantDomain string
	// StallAfter is how long a request waits on its tenant's database (for
	// a connection, or an answer) before the server is probed, to tell a
	// server that hangs from a slow query. Default 750ms.
	StallAfter time.Duration
	// ProbeTimeout bounds that probe (connect and SELECT 1): a server that
	// does not answer it is down, its requests answer 503 until a probe, at
	// most every 500 ms while requests come, finds it answering. Default 700ms.
	ProbeTimeout time.Duration
	// HoldTimeout bounds how long a request of a tenant whose move holds it
	// (the fence is up) waits for the move to switch before it answers 503
	// with Retry-After. Default 5s.
	HoldTimeout time.Duration
	// PooledStatementTimeout is the statement_timeout of a pooled tenant's
	// requests, set in each request's transaction, so one tenant's slow
	// query cannot hold a connection its pool database's other tenants
	// need. Default 5s.
	PooledStatementTimeout time.Duration
}

// openAPI is the tenant API's OpenAPI document; openapi_test.go keeps it
// matched to the routes.
//
//go:embed openapi.yaml
var openAPI []byte

// OpenAPIDocument is the tenant API's OpenAPI document, as GET /openapi.yaml serves it.
func OpenAPIDocument() []byte { return openAPI }

// Router serves the tenant API.
type Router struct {
	cfg      Config
	engine   *gin.Engine
	resolver *resolver
	pools    *pools
	meter    *meter
	servers  *stall.Watchdog         // tenant database servers that hang
	slots    slots                   // pooled tenants' shares of their pool database's connections
	scopes   map[routeKey]routeScope // written by New only

	follow startstop.Loop // the catalog's changes to the caches
}

// New returns the tenant API. Start runs its background work.
func New(cfg Config) (*Router, error) {
	if cfg.Store == nil || cfg.Watcher == nil || cfg.Ready == nil {
		return nil, errors.New("router: Store, Watcher and Ready are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 5 * time.Second
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.AcquireTimeout == 0 {
		cfg.AcquireTimeout = 1800 * time.Millisecond
	}
	if cfg.NegativeTTL == 0 {
		cfg.NegativeTTL = 10 * time.Second
	}
	if cfg.HoldTimeout == 0 {
		cfg.HoldTimeout = 5 * time.Second
	}
	if cfg.StallAfter == 0 {
		cfg.StallAfter = 750 * time.Millisecond
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 700 * time.Millisecond
	}
	if cfg.PooledStatementTimeout == 0 {
		cfg.PooledStatementTimeout = 5 * time.Second
	}
	r := &Router{
		cfg:      cfg,
		resolver: newResolver(cfg.Store, cfg.Logger, cfg.NegativeTTL),
		pools:    newPools(cfg.Pools, cfg.Store, cfg.Logger, cfg.Registerer),
		meter:    newMeter(cfg.Store, cfg.Logger, cfg.FlushInterval, cfg.Registerer),
		servers: stall.New(stall.Config{StallAfter: cfg.StallAfter, ProbeTimeout: cfg.ProbeTimeout,
			Cause: serverDown, Logger: cfg.Logger}),
		scopes: map[routeKey]routeScope{},
	}
	e := httpapi.NewEngine(httpapi.Config{API: "tenant", Logger: cfg.Logger, Metrics: cfg.Metrics, MaxBodyBytes: 1 << 20})
	// The client address is clientAddr's, from TrustedProxies; gin's own
	// (c.ClientIP) would trust every proxy's headers by default.
	if err := e.SetTrustedProxies(nil); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	httpapi.HealthRoutes(e, cfg.Ready)
	httpapi.OpenAPIRoute(e, openAPI)
	v1 := e.Group("/v1", r.authenticate)
	r.route(v1, http.MethodGet, "/me", scopeNone, r.me)
	r.route(v1, http.MethodGet, "/usage", catalog.ScopeUsageRead, r.usage)
	r.route(v1, http.MethodGet, "/audit", catalog.ScopeAuditRead, r.audit)
	r.userRoutes(v1)
	r.engine = e
	return r, nil
}

// Handler is the tenant API's HTTP handler.
func (r *Router) Handler() http.Handler { return r.engine }

// Start follows the catalog's changes and flushes usage until Stop. A
// Router that runs refuses a second Start with startstop.ErrStarted.
func (r *Router) Start(ctx context.Context) error {
	// Subscribed before Start returns: no change made after it is missed.
	changes, unsubscribe := r.cfg.Watcher.Subscribe()
	err := r.follow.Start(ctx, func(ctx context.Context) {
		defer unsubscribe()
		r.followChanges(ctx, changes)
	})
	if err != nil {
		unsubscribe()
		return fmt.Errorf("router: %w", err)
	}
	if err := r.meter.start(ctx); err != nil {
		return errors.Join(fmt.Errorf("router: %w", err), r.follow.Stop(ctx))
	}
	return nil
}

// followChanges brings each catalog change to the caches until ctx ends.
func (r *Router) followChanges(ctx context.Context, changes <-chan string) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-changes:
			if serverID, ok := catalog.ServerChanged(id); ok {
				r.applyBudgets(ctx, serverID)
				continue
			}
			r.resolver.forget(id)
			if id == "" {
				r.applyBudgets(ctx, 0) // changes may have been missed
			} else {
				// Credentials may have changed, or the tenant gone: new
				// requests open a fresh pool; running ones finish on the old.
				r.pools.drop(id)
			}
		}
	}
}

// applyBudgets reads the connection budget of a server (0: of every
// server) from the catalog and applies this process's share of it to the
// pools open there. A catalog that does not answer leaves the budgets as
// they were; the next change, or reconnection, brings them up to date.
func (r *Router) applyBudgets(ctx context.Context, serverID int64) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	servers, err := r.cfg.Store.ListServers(ctx)
	if err != nil {
		r.cfg.Logger.WarnContext(ctx, "reading servers' connection budgets", "error", err, "server_id", serverID)
		return
	}
	for _, srv := range servers {
		if serverID == 0 || srv.ID == serverID {
			r.resolver.setBudget(srv.ID, srv.ConnBudget)
			r.pools.setBudget(srv.ID, srv.ConnBudget)
			if serverID != 0 {
				r.cfg.Logger.InfoContext(ctx, "server connection budget applied", "server", srv.Name, "conn_budget", srv.ConnBudget)
			}
		}
	}
}

// Stop flushes the usage counters (bounded by ctx) and closes every pool.
// Call it after the HTTP server has stopped taking requests.
func (r *Router) Stop(ctx context.Context) error {
	err := errors.Join(r.follow.Stop(ctx), r.meter.stop(ctx))
	r.servers.Wait()
	r.resolver.background.Wait()
	r.pools.purge()
	return err
}

// Context keys.
const (
	tenantKey = "tenantplane.router.tenant"
	poolKey   = "tenantplane.router.pool"
)

// authenticate resolves the request's key to its tenant, refuses tenants
// that may not be served, applies the plan's rate limit, counts the request,
// and releases the tenant's pool (if a handler used it) when the request ends.
func (r *Router) authenticate(c *gin.Context) {
	key, _ := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
	e, err := r.resolver.resolve(c, key)
	if err != nil {
		if catalog.CodeOf(err) == catalog.CodeUnauthorized {
			c.Header("WWW-Authenticate", `Bearer realm="tenantplane"`)
		}
		httpapi.WriteError(c, err)
		return
	}
	c.Set(httpapi.TenantLogKey, e.tenant.Slug)
	// A key at another tenant's host is as good as unknown: checked first,
	// so that nothing later says the key exists.
	if err := r.checkHost(c, c.Request.Host, e); err != nil {
		if catalog.CodeOf(err) == catalog.CodeUnauthorized {
			c.Header("WWW-Authenticate", `Bearer realm="tenantplane"`)
		}
		httpapi.WriteError(c, err)
		return
	}
	// Before anything else is said about the tenant: a request from outside
	// its networks learns nothing of its state.
	if err := r.checkNetwork(c.Request, e); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if e.tenant.Held {
		if e, err = r.awaitRelease(c, key, e); err != nil {
			httpapi.WriteError(c, err)
			return
		}
	}
	if err := servable(e); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := r.checkScope(c.Request.Method, c.FullPath(), e); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if res := e.limiter.Reserve(); !res.OK() || res.Delay() > 0 {
		wait := res.Delay()
		res.Cancel()
		c.Header("Retry-After", strconv.Itoa(int(math.Ceil(max(wait, time.Second).Seconds()))))
		httpapi.Fail(c, catalog.CodeRateLimited, "rate limit of plan %q exceeded (%d requests per second)", e.plan.Name, e.plan.RatePerSec)
		return
	}
	r.meter.count(e.tenant.ID, e.keyID)

	ctx, cancel := context.WithTimeout(c.Request.Context(), r.cfg.RequestTimeout)
	defer cancel()
	c.Request = c.Request.WithContext(ctx)
	c.Set(tenantKey, e)
	c.Set(poolRouterKey, r)
	// Deferred: a handler that panics still ends its transaction (rolled
	// back) and gives its connection, pool and slot back.
	defer func() {
		h, ok := c.Get(poolKey)
		if !ok {
			return
		}
		if p := recover(); p != nil {
			if h.(*held).tx {
				_ = h.(*held).endTx(c, http.StatusInternalServerError)
			}
			r.releaseHeld(c, h.(*held))
			panic(p)
		}
		r.releaseHeld(c, h.(*held))
	}()
	c.Next()
}

const poolRouterKey = "tenantplane.router.router"

// servable says why a tenant's requests cannot be served in its state, or nil.
func servable(e *resolved) error {
	switch e.tenant.State {
	case catalog.TenantActive:
		return nil
	case catalog.TenantSuspended:
		return catalog.Errorf(catalog.CodeForbidden, "tenant %q is suspended", e.tenant.Slug)
	case catalog.TenantDeleting, catalog.TenantDeleted:
		return catalog.Errorf(catalog.CodeNotFound, "tenant %q does not exist", e.tenant.Slug)
	default:
		return catalog.Errorf(catalog.CodeUnavailable, "tenant %q is %s", e.tenant.Slug, e.tenant.State)
	}
}

// awaitRelease holds a request of a tenant whose move has its fence up,
// instead of failing it: it waits for the tenant's next change in the
// catalog (the move switched, or gave up and lifted the fence), at most
// HoldTimeout, then answers with the tenant as it is now. Still held then,
// the request gets 503 with Retry-After.
func (r *Router) awaitRelease(c *gin.Context, key string, e *resolved) (*resolved, error) {
	deadline := time.NewTimer(r.cfg.HoldTimeout)
	defer deadline.Stop()
	for {
		// Listen before looking again, so a change in between is not missed.
		changed := r.resolver.next(e.tenant.ID)
		fresh, err := r.resolver.resolve(c, key)
		if err != nil {
			return nil, err
		}
		if !fresh.tenant.Held {
			return fresh, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			c.Header("Retry-After", "1")
			return nil, catalog.Errorf(catalog.CodeUnavailable, "tenant %q is being moved to another server; retry in a second", e.tenant.Slug)
		case <-c.Request.Context().Done():
			return nil, catalog.Errorf(catalog.CodeUnavailable, "tenant %q is being moved to another server; the request ended while it waited", e.tenant.Slug)
		}
	}
}

// Tenant returns the tenant of the request.
func Tenant(c *gin.Context) catalog.Tenant {
	return c.MustGet(tenantKey).(*resolved).tenant
}

// held is the tenant pool and connection a request uses; for a pooled
// tenant, also its transaction and its slot.
type held struct {
	tp   *tenantPool
	conn *pgxpool.Conn

	tx       bool // a transaction naming the tenant is open on conn
	ended    bool // the transaction was committed or rolled back
	endErr   error
	writer   *txWriter
	txw      txWriter // writer's storage, one allocation with held
	slots    *tenantSlots
	tenantID string
	done     func() // ends the watch on the tenant's server (internal/stall); nil for a pooled tenant
}

// DB returns the request's tenant-scoped database handle, held for the rest
// of the request and released when it ends, whatever the tenant's tier: a
// connection to the tenant's own database as its own role, or, for a pooled
// tenant, a connection to its pool database inside a transaction that names
// the tenant (row-level security shows it only its rows; the transaction
// commits before the answer is written, or rolls back on an error answer).
// Handlers stay tier-blind, and filter on tenant_id (Tenant(c).ID) all the
// same, so the planner uses the (tenant_id, ...) indexes. A handler of a new
// tenant endpoint needs nothing more:
//
//	db, err := router.DB(c)
//	if err != nil { httpapi.WriteError(c, err); return }
//	rows, err := db.Query(c, "SELECT ... FROM projects WHERE tenant_id = $1", router.Tenant(c).ID)
//
// It fails fast (503) when the tenant's server is down, slow or out of
// connection budget; other tenants are not affected. A pooled tenant over
// its plan's share of its pool database's connections gets 429.
func DB(c *gin.Context) (*pgxpool.Conn, error) {
	if h, ok := c.Get(poolKey); ok {
		return h.(*held).conn, nil
	}
	r := c.MustGet(poolRouterKey).(*Router)
	e := c.MustGet(tenantKey).(*resolved)
	if e.tenant.PoolID != 0 {
		return r.pooledDB(c, e)
	}
	conn, err := r.dedicatedDB(c, e)
	if err != nil && fencedOut(err) {
		// The tenant's database refused it: a move's fence went up between
		// this request's resolution and now, before this replica heard of
		// the move's hold. Nothing has run yet, so it is asked again as a
		// new request would be: held until the move switches or gives up,
		// then on the tenant's database as it is then.
		key, _ := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
		fresh, rerr := r.resolver.reread(key)
		if rerr == nil && fresh.tenant.Held {
			fresh, rerr = r.awaitRelease(c, key, fresh)
		}
		if rerr == nil {
			rerr = servable(fresh)
		}
		if rerr != nil {
			return nil, rerr
		}
		c.Set(tenantKey, fresh)
		if fresh.tenant.PoolID != 0 {
			return r.pooledDB(c, fresh)
		}
		return r.dedicatedDB(c, fresh)
	}
	return conn, err
}

// fencedOut says whether err is a tenant database refusing a connection
// because a move fenced it: CONNECT revoked from the tenant's role, or its
// sessions terminated.
func fencedOut(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "57P01")
}

// dedicatedDB gives a dedicated tenant's request a connection of its own
// database's pool, watched for a hung server.
func (r *Router) dedicatedDB(c *gin.Context, e *resolved) (*pgxpool.Conn, error) {
	if r.servers.Down(e.tenant.ServerID) {
		return nil, serverDown(e.tenant.Server)
	}
	// The request's context, not c: a pool opened here keeps its values
	// for connections made in the background, and c.Request changes below.
	req := c.Request
	tp, err := r.pools.acquire(req.Context(), e)
	if err != nil {
		return nil, unavailable(e, err)
	}
	// The rest of the request runs on a context that a server found hung
	// cancels (see internal/stall).
	ctx, cancel := context.WithCancelCause(req.Context())
	unwatch := r.servers.Watch(e.tenant.ServerID, e.tenant.Server, probeServer(tp.connCfg), cancel)
	done := func() { unwatch(); cancel(nil) }
	actx, acancel := context.WithTimeout(ctx, r.cfg.AcquireTimeout)
	defer acancel()
	conn, err := tp.pool.Acquire(actx)
	if err != nil {
		done()
		r.pools.release(tp)
		return nil, unavailable(e, err)
	}
	c.Request = req.WithContext(ctx)
	c.Set(poolKey, &held{tp: tp, conn: conn, done: done})
	return conn, nil
}

func unavailable(e *resolved, err error) error {
	if errors.Is(err, errBudget) {
		return catalog.WrapError(catalog.CodeUnavailable, err, "the database server of tenant %q is at its connection budget; retry shortly", e.tenant.Slug)
	}
	// A malformed server DSN (CodeInvalid) is the operator's to fix, not the
	// tenant's: to the tenant its database is unavailable, the cause logged.
	var ce *catalog.Error
	if errors.As(err, &ce) && ce.Code != catalog.CodeInvalid {
		return err
	}
	return catalog.WrapError(catalog.CodeUnavailable, err, "the database of tenant %q is unavailable", e.tenant.Slug)
}

func (r *Router) me(c *gin.Context) {
	e := c.MustGet(tenantKey).(*resolved)
	c.JSON(http.StatusOK, gin.H{
		"id": e.tenant.ID, "slug": e.tenant.Slug, "name": e.tenant.Name, "plan": e.tenant.Plan,
		"state": e.tenant.State, "key_id": e.keyID, "scopes": e.scopeNames, "expires_at": e.expiresAtJSON(),
		"limits": gin.H{"requests_per_second": e.plan.RatePerSec, "burst": e.plan.RateBurst, "connections": e.plan.MaxConns},
	})
}

func (r *Router) usage(c *gin.Context) {
	e := c.MustGet(tenantKey).(*resolved)
	now := time.Now().UTC()
	usage, err := r.cfg.Store.TenantUsage(c, e.tenant.ID, now)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"period": fmt.Sprintf("%04d-%02d", now.Year(), now.Month()), "usage": usage,
		"note": "counted requests reach this view within one flush interval"})
}

// audit answers a page of the tenant's own audit events, oldest first.
func (r *Router) audit(c *gin.Context) {
	e := c.MustGet(tenantKey).(*resolved)
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	events, next, err := r.cfg.Store.ListTenantAudit(c, e.tenant.ID, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("events", events, next, nil))
}

package router

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/tenantplane/tenantplane/catalog"
)

// resolved is what a key resolves to: the tenant as the catalog last said,
// its plan, its server's connection budget, and its rate limiter.
type resolved struct {
	hash         [32]byte
	keyID        string
	tenant       catalog.Tenant
	plan         catalog.Plan
	serverBudget int
	limiter      *rate.Limiter
	fetched      time.Time
	staleUntil   time.Time // served as it is until then, though old (guarded by resolver.mu)
	scopes       scopeSet
	scopeNames   []string
	// expiresAt is when the key stops working (zero: never). Checked on
	// every request, so an expiry takes effect on the second on every
	// replica, with no notification and no catalog round trip.
	expiresAt time.Time
	// allow is the tenant's IP allowlist (empty: any network); a change
	// comes with a notification, which drops this entry.
	allow []netip.Prefix
}

func (e *resolved) expired(now time.Time) bool {
	return !e.expiresAt.IsZero() && !now.Before(e.expiresAt)
}

func (e *resolved) expiresAtJSON() *time.Time {
	if e.expiresAt.IsZero() {
		return nil
	}
	return &e.expiresAt
}

// resolver maps API keys to tenants through a cache that the catalog's
// change notifications keep fresh: a suspend, delete, key revocation or
// credential change reaches it within the notification's latency, not after
// a TTL. Unknown keys are remembered for a short time so a flood of bad keys
// does not reach the catalog. While the catalog is down, cached keys keep
// resolving; new ones answer 503.
type resolver struct {
	store       *catalog.Store
	logger      *slog.Logger
	negativeTTL time.Duration
	maxAge      time.Duration

	mu       sync.Mutex
	byHash   *simplelru.LRU[[32]byte, *resolved]
	byTenant map[string]map[[32]byte]struct{}
	negative *simplelru.LRU[[32]byte, time.Time]
	slugs    *simplelru.LRU[string, slugEntry] // whether a host's slug names a tenant
	hosts    *simplelru.LRU[string, hostEntry] // custom hostnames' tenants
	limiters map[string]*rate.Limiter          // by tenant id; survive re-resolution
	plans    map[string]catalog.Plan
	budgets  map[int64]int            // by server id
	changed  map[string]chan struct{} // by tenant id: closed at its next change

	flight singleflight.Group

	background sync.WaitGroup // hostnames read again in the background
}

func newResolver(store *catalog.Store, logger *slog.Logger, negativeTTL time.Duration) *resolver {
	r := &resolver{
		store: store, logger: logger, negativeTTL: negativeTTL, maxAge: 5 * time.Minute,
		byTenant: map[string]map[[32]byte]struct{}{},
		limiters: map[string]*rate.Limiter{},
		budgets:  map[int64]int{},
		changed:  map[string]chan struct{}{},
	}
	r.byHash, _ = simplelru.NewLRU(100_000, r.unindex)
	r.negative, _ = simplelru.NewLRU[[32]byte, time.Time](10_000, nil)
	r.slugs, _ = simplelru.NewLRU[string, slugEntry](10_000, nil)
	r.hosts, _ = simplelru.NewLRU[string, hostEntry](10_000, nil)
	return r
}

func (r *resolver) unindex(h [32]byte, e *resolved) {
	if set := r.byTenant[e.tenant.ID]; set != nil {
		delete(set, h)
		if len(set) == 0 {
			delete(r.byTenant, e.tenant.ID)
		}
	}
}

// resolve returns the entry for key, from the cache or the catalog.
func (r *resolver) resolve(ctx context.Context, key string) (*resolved, error) {
	if !strings.HasPrefix(key, catalog.KeyPrefix) || len(key) > 100 {
		return nil, errBadKey
	}
	var h [32]byte
	copy(h[:], catalog.HashKey(key))
	now := time.Now()
	r.mu.Lock()
	e, ok := r.byHash.Get(h)
	if ok && subtle.ConstantTimeCompare(e.hash[:], h[:]) == 1 && (now.Sub(e.fetched) < r.maxAge || now.Before(e.staleUntil)) {
		r.mu.Unlock()
		if e.expired(now) {
			return nil, errBadKey
		}
		return e, nil
	}
	if until, bad := r.negative.Get(h); bad && now.Before(until) {
		r.mu.Unlock()
		return nil, errBadKey
	}
	r.mu.Unlock()

	// Not on ctx: the read may outlive the request (below), and a gin
	// context is reused once its request ends.
	flight := r.flight.DoChan(string(h[:]), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return r.load(ctx, h)
	})
	// A known key whose entry is old (or was marked so when changes may
	// have been missed) is read again, and the answer waited for, but not
	// for long: a catalog that hangs must not slow a tenant already known.
	// Past staleWait the old entry is served, for a second without asking
	// again, while the read goes on.
	var slow <-chan time.Time
	if ok {
		timer := time.NewTimer(staleWait)
		defer timer.Stop()
		slow = timer.C
	}
	var res singleflight.Result
	select {
	case res = <-flight:
	case <-slow:
		res.Err = catalog.ErrUnavailable
	}
	if res.Err != nil {
		if ok && errors.Is(res.Err, catalog.ErrUnavailable) && !e.expired(time.Now()) {
			r.mu.Lock()
			e.staleUntil = time.Now().Add(time.Second)
			r.mu.Unlock()
			return e, nil // the catalog does not answer: serve what we knew
		}
		return nil, res.Err
	}
	return res.Val.(*resolved), nil
}

// reread reads key's entry from the catalog again, whatever the cache
// holds, and caches it.
func (r *resolver) reread(key string) (*resolved, error) {
	if !strings.HasPrefix(key, catalog.KeyPrefix) || len(key) > 100 {
		return nil, errBadKey
	}
	var h [32]byte
	copy(h[:], catalog.HashKey(key))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return r.load(ctx, h)
}

// staleWait is how long a request of a known key waits for its entry to be
// read again before it is served the old one.
const staleWait = 250 * time.Millisecond

var errBadKey = catalog.Errorf(catalog.CodeUnauthorized, "missing, unknown or revoked API key: send Authorization: Bearer <tenant API key>")

func (r *resolver) load(ctx context.Context, h [32]byte) (*resolved, error) {
	owner, err := r.store.ResolveAPIKey(ctx, h[:])
	if errors.Is(err, catalog.ErrNotFound) || (err == nil && (owner.Revoked || owner.Expired(time.Now()))) {
		r.mu.Lock()
		r.negative.Add(h, time.Now().Add(r.negativeTTL))
		r.mu.Unlock()
		return nil, errBadKey
	}
	if err != nil {
		return nil, err
	}
	t, err := r.store.GetTenantByID(ctx, owner.TenantID)
	if err != nil {
		return nil, err
	}
	plan, err := r.plan(ctx, t.Plan)
	if err != nil {
		return nil, err
	}
	budget, err := r.budget(ctx, t)
	if err != nil {
		return nil, err
	}
	allow, err := catalog.ParsePrefixes("network_allow", owner.Allow)
	if err != nil {
		return nil, err
	}
	e := &resolved{allow: allow, hash: h, keyID: owner.KeyID, tenant: t, plan: plan, serverBudget: budget, fetched: time.Now(),
		scopes: scopesOf(owner.Scopes), scopeNames: owner.Scopes, expiresAt: owner.ExpiresAt}
	r.mu.Lock()
	defer r.mu.Unlock()
	lim := r.limiters[t.ID]
	if lim == nil || lim.Limit() != rate.Limit(plan.RatePerSec) || lim.Burst() != plan.RateBurst {
		lim = rate.NewLimiter(rate.Limit(plan.RatePerSec), plan.RateBurst)
		r.limiters[t.ID] = lim
	}
	e.limiter = lim
	r.byHash.Add(h, e)
	if r.byTenant[t.ID] == nil {
		r.byTenant[t.ID] = map[[32]byte]struct{}{}
	}
	r.byTenant[t.ID][h] = struct{}{}
	return e, nil
}

func (r *resolver) plan(ctx context.Context, name string) (catalog.Plan, error) {
	r.mu.Lock()
	p, ok := r.plans[name]
	r.mu.Unlock()
	if ok {
		return p, nil
	}
	plans, err := r.store.ListPlans(ctx)
	if err != nil {
		return catalog.Plan{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plans = map[string]catalog.Plan{}
	for _, p := range plans {
		r.plans[p.Name] = p
	}
	if p, ok = r.plans[name]; !ok {
		return catalog.Plan{}, catalog.Errorf(catalog.CodeInternal, "tenant's plan %q is not in the catalog", name)
	}
	return p, nil
}

func (r *resolver) budget(ctx context.Context, t catalog.Tenant) (int, error) {
	r.mu.Lock()
	b, ok := r.budgets[t.ServerID]
	r.mu.Unlock()
	if ok {
		return b, nil
	}
	srv, err := r.store.GetServer(ctx, t.Server)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.budgets[t.ServerID] = srv.ConnBudget
	r.mu.Unlock()
	return srv.ConnBudget, nil
}

// setBudget records a server's conn_budget for the tenants resolved from now on.
func (r *resolver) setBudget(serverID int64, connBudget int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.budgets[serverID] = connBudget
}

// forget drops what is cached of a tenant ("" drops everything): the next
// request reads the catalog again.
func (r *resolver) forget(tenantID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Any tenant's change may be a hostname added or removed: the hostnames
	// are looked up again (a few queries, one per host in use). They are
	// marked stale, not dropped, so that a catalog that does not answer
	// leaves them as they were.
	for _, h := range r.hosts.Keys() {
		if he, ok := r.hosts.Peek(h); ok {
			he.until = time.Time{}
			r.hosts.Add(h, he)
		}
	}
	for id, ch := range r.changed {
		if tenantID == "" || id == tenantID {
			close(ch)
			delete(r.changed, id)
		}
	}
	if tenantID == "" {
		// Changes may have been missed (the listener reconnected): every
		// key is read again, in the background on its next request, which
		// it is still served. Dropping them would leave the tenants not
		// seen again before a catalog that flaps goes away once more
		// without service.
		for _, h := range r.byHash.Keys() {
			if e, ok := r.byHash.Peek(h); ok {
				stale := *e
				stale.fetched = time.Time{}
				r.byHash.Add(h, &stale)
			}
		}
		r.negative.Purge()
		r.slugs.Purge()
		r.plans = nil
		return
	}
	for h := range r.byTenant[tenantID] {
		r.byHash.Remove(h)
	}
}

// next returns a channel closed at the tenant's next change in the catalog
// (or when changes may have been missed): what a held request waits for.
func (r *resolver) next(tenantID string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := r.changed[tenantID]
	if ch == nil {
		ch = make(chan struct{})
		r.changed[tenantID] = ch
	}
	return ch
}

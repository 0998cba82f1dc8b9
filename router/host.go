package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/tenantplane/tenantplane/catalog"
)

// normalHost is a Host header without its port, lowercased, without a
// trailing dot.
func normalHost(host string) string {
	if strings.LastIndexByte(host, ':') > strings.LastIndexByte(host, ']') { // a port (SplitHostPort's error would allocate on every request)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// hostSlug reads the tenant a request's Host (normalHost's) names under the
// tenant domain: "acme" of acme.api.example.com. named is false for any
// other host (the domain itself, an address, another name). A host under the
// domain that cannot be a slug (a.b.api.example.com) is named with an empty
// slug, which no tenant has.
func hostSlug(host, domain string) (slug string, named bool) {
	if domain == "" {
		return "", false
	}
	label, ok := strings.CutSuffix(host, "."+domain)
	if !ok {
		return "", false
	}
	if catalog.ValidateSlug(label) != nil {
		return "", true
	}
	return label, true
}

// checkHost refuses a key of another tenant than the one its Host names,
// with the body of an unknown key: nothing says the key exists. A Host that
// names no tenant is 404.
func (r *Router) checkHost(ctx context.Context, rawHost string, e *resolved) error {
	host := normalHost(rawHost)
	slug, named := hostSlug(host, r.cfg.TenantDomain)
	if !named {
		if host == r.cfg.TenantDomain {
			return nil // the shared host
		}
		// A custom hostname of a tenant takes only its keys; any other host
		// routes by key alone.
		owner, err := r.resolver.hostTenant(ctx, host)
		if err != nil || owner == "" || owner == e.tenant.ID {
			return err
		}
		return errBadKey
	}
	if slug == e.tenant.Slug {
		return nil
	}
	exists, err := r.resolver.slugExists(ctx, slug)
	if err != nil {
		return err
	}
	if !exists {
		return catalog.Errorf(catalog.CodeNotFound, "no tenant is served at %s", host)
	}
	return errBadKey
}

// hostEntry is the tenant of a custom hostname ("": none), as the catalog
// last said.
type hostEntry struct {
	tenantID string
	until    time.Time
}

// hostTenant returns the tenant whose custom hostname host is ("" for none),
// from a cache that every tenant change makes stale (a hostname added or
// removed comes with one), so a change holds on every replica within a
// second; an entry lives at most negativeTTL besides. While the catalog
// does not answer, a known host keeps its tenant and an unknown one routes
// by key alone: a key reaches only its own tenant either way.
func (r *resolver) hostTenant(ctx context.Context, host string) (string, error) {
	if _, err := netip.ParseAddr(host); err == nil || host == "" {
		return "", nil // an address is nobody's hostname
	}
	now := time.Now()
	r.mu.Lock()
	he, ok := r.hosts.Get(host)
	r.mu.Unlock()
	if ok && now.Before(he.until) {
		return he.tenantID, nil
	}
	if ok {
		// Known: served as the catalog last said while it is asked again
		// in the background (once: the entry holds for a second meanwhile),
		// so a catalog that hangs slows no request.
		r.mu.Lock()
		r.hosts.Add(host, hostEntry{tenantID: he.tenantID, until: now.Add(time.Second)})
		r.mu.Unlock()
		r.background.Add(1)
		go func() {
			defer r.background.Done()
			_, _ = r.lookupHost(context.Background(), host, he) // not ctx: a gin context is reused once its request ends
		}()
		return he.tenantID, nil
	}
	return r.lookupHost(ctx, host, he)
}

// lookupHost asks the catalog for a custom hostname's tenant, once at a
// time per host; he is what was known of it.
func (r *resolver) lookupHost(ctx context.Context, host string, he hostEntry) (string, error) {
	v, err, _ := r.flight.Do("host:"+host, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		defer cancel()
		id, err := r.store.HostnameTenant(ctx, host)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		r.hosts.Add(host, hostEntry{tenantID: id, until: time.Now().Add(r.negativeTTL)})
		r.mu.Unlock()
		return id, nil
	})
	if err != nil {
		if errors.Is(err, catalog.ErrUnavailable) {
			// The catalog is down: what we knew, if anything, asked again
			// in a second rather than on every request.
			r.mu.Lock()
			r.hosts.Add(host, hostEntry{tenantID: he.tenantID, until: time.Now().Add(time.Second)})
			r.mu.Unlock()
			return he.tenantID, nil
		}
		return "", err
	}
	return v.(string), nil
}

// slugEntry is whether a slug names a tenant, as the catalog last said.
type slugEntry struct {
	exists bool
	until  time.Time
}

// slugExists reports whether a tenant (not deleting or deleted) has the
// slug, from a cache: a slug never changes tenant, so a yes holds for
// maxAge; a no for negativeTTL (a tenant created meanwhile is served at its
// host that much later).
func (r *resolver) slugExists(ctx context.Context, slug string) (bool, error) {
	now := time.Now()
	r.mu.Lock()
	se, ok := r.slugs.Get(slug)
	r.mu.Unlock()
	if ok && now.Before(se.until) {
		return se.exists, nil
	}
	v, err, _ := r.flight.Do("slug:"+slug, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		defer cancel()
		t, err := r.store.GetTenant(ctx, slug)
		if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return nil, err
		}
		exists := err == nil && t.State != catalog.TenantDeleting && t.State != catalog.TenantDeleted
		ttl := r.maxAge
		if !exists {
			ttl = r.negativeTTL
		}
		r.mu.Lock()
		r.slugs.Add(slug, slugEntry{exists: exists, until: time.Now().Add(ttl)})
		r.mu.Unlock()
		return exists, nil
	})
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}

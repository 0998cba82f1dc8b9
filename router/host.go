package router

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/tenantplane/tenantplane/catalog"
)

// hostSlug reads the tenant a request's Host names under the tenant
// domain: "acme" of acme.api.example.com. named is false for any other
// host (the domain itself, an address, another name): those route by key
// alone. A host under the domain that cannot be a slug (a.b.api.example.com)
// is named with an empty slug, which no tenant has.
func hostSlug(host, domain string) (slug string, named bool) {
	if domain == "" {
		return "", false
	}
	if strings.LastIndexByte(host, ':') > strings.LastIndexByte(host, ']') { // a port (SplitHostPort's error would allocate on every request)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
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
func (r *Router) checkHost(ctx context.Context, host string, e *resolved) error {
	slug, named := hostSlug(host, r.cfg.TenantDomain)
	if !named || slug == e.tenant.Slug {
		return nil
	}
	exists, err := r.resolver.slugExists(ctx, slug)
	if err != nil {
		return err
	}
	if !exists {
		return catalog.Errorf(catalog.CodeNotFound, "no tenant is served at %s", strings.ToLower(host))
	}
	return errBadKey
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

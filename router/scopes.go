package router

import (
	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
)

// scopeSet is a key's scopes as bits, so the check on every request is an
// AND, not a search.
type scopeSet uint8

var scopeBits = map[string]scopeSet{
	catalog.ScopeUsersRead:  1 << 0,
	catalog.ScopeUsersWrite: 1 << 1,
	catalog.ScopeUsageRead:  1 << 2,
	catalog.ScopeAuditRead:  1 << 3,
	catalog.ScopeAll:        ^scopeSet(0),
}

// scopeNone is the scope of a route any key of the tenant may call (GET
// /v1/me, which tells a key what it may do). The OpenAPI document writes it
// as x-scope: none.
const scopeNone = ""

func scopesOf(names []string) scopeSet {
	var s scopeSet
	for _, n := range names {
		s |= scopeBits[n] // an unknown name (none is stored) grants nothing
	}
	return s
}

// routeKey is a route of the engine: its method and path pattern.
type routeKey struct{ method, path string }

// routeScope is the scope a route needs.
type routeScope struct {
	name string
	bit  scopeSet
}

// route registers a tenant API route under g with the scope it needs
// (scopeNone: any key of the tenant). Every /v1 route is registered so: a
// route without a declared scope is refused to every key.
func (r *Router) route(g *gin.RouterGroup, method, path, scope string, h gin.HandlerFunc) {
	g.Handle(method, path, h)
	r.scopes[routeKey{method, g.BasePath() + path}] = routeScope{name: scope, bit: scopeBits[scope]}
}

// checkScope refuses a key that lacks the scope of the route (method and
// path pattern, gin's FullPath).
func (r *Router) checkScope(method, path string, e *resolved) error {
	need, ok := r.scopes[routeKey{method, path}]
	switch {
	case !ok:
		return catalog.SubErrorf(catalog.CodeForbidden, catalog.SubcodeInsufficientScope,
			"%s %s declares no scope, so no key may call it", method, path)
	case need.name == scopeNone, e.scopes&need.bit == need.bit:
		return nil
	}
	return catalog.SubErrorf(catalog.CodeForbidden, catalog.SubcodeInsufficientScope,
		"this key lacks scope %s, which %s %s needs: issue a key with it", need.name, method, path)
}

// Scopes returns the scope each /v1 route needs, by "METHOD /path" ("" for
// any key of the tenant), for the OpenAPI document's test.
func (r *Router) Scopes() map[string]string {
	out := make(map[string]string, len(r.scopes))
	for k, v := range r.scopes {
		out[k.method+" "+k.path] = v.name
	}
	return out
}

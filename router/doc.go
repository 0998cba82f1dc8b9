// Package router serves the tenant API: it authenticates each request by its
// API key, resolves the tenant, and runs the request on that tenant's own
// database through a bounded cache of per-tenant pgx pools.
package router

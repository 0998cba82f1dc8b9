// Package httpapi holds what both of tenantplane's HTTP APIs (the tenant API
// in router and the admin API in controlplane) share at the edge: the one table
// that maps catalog error codes to HTTP statuses, the JSON error body
// {"error": {"code", "message"}}, request ids, structured access logs,
// Prometheus request metrics, panic recovery and body limits.
package httpapi

package router

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// Config configures the tenant API.
type Config struct {
	// Logger receives one line per request. Default slog.Default().
	Logger *slog.Logger
	// Metrics counts requests; optional.
	Metrics *httpapi.Metrics
	// Ready reports whether the dependencies answer, for GET /readyz. Required.
	Ready func(context.Context) error
}

// New returns the tenant API's HTTP handler.
func New(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := httpapi.NewEngine(httpapi.Config{API: "tenant", Logger: cfg.Logger, Metrics: cfg.Metrics})
	httpapi.HealthRoutes(e, cfg.Ready)
	return e
}

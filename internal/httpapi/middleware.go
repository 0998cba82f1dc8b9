package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tenantplane/tenantplane/catalog"
)

const requestIDKey = "tenantplane.request_id"

// RequestIDHeader carries the request id in and out.
const RequestIDHeader = "X-Request-Id"

// Config configures NewEngine.
type Config struct {
	// API names the API in logs and metrics: "tenant" or "admin".
	API string
	// Logger receives one structured line per request. Required.
	Logger *slog.Logger
	// Metrics, when set, counts requests and their durations.
	Metrics *Metrics
	// MaxBodyBytes bounds request bodies. Default 1 MiB.
	MaxBodyBytes int64
}

// NewEngine returns a gin engine with the middleware both APIs share, in
// order: request id, access log and metrics, panic recovery, body limit; and
// JSON answers for unknown routes and methods.
func NewEngine(cfg Config) *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	e := gin.New()
	e.HandleMethodNotAllowed = true
	e.ContextWithFallback = true
	e.Use(requestID(), accessLog(cfg), recovery(cfg.Logger), maxBody(cfg.MaxBodyBytes), textParams)
	e.NoRoute(func(c *gin.Context) {
		Fail(c, catalog.CodeNotFound, "no such endpoint: %s %s", c.Request.Method, c.Request.URL.Path)
	})
	e.NoMethod(func(c *gin.Context) {
		c.AbortWithStatusJSON(http.StatusMethodNotAllowed, ErrorBody{Error: ErrorDetail{Code: "method_not_allowed", Message: "method not allowed"}})
	})
	return e
}

// textParams answers 404 for a path parameter that is not valid text
// (invalid UTF-8, a NUL): it can name nothing of ours, and the database
// would refuse it as bad input (400) instead.
func textParams(c *gin.Context) {
	for _, p := range c.Params {
		if !catalog.ValidText(p.Value) {
			Fail(c, catalog.CodeNotFound, "%s %q not found", p.Key, p.Value)
			return
		}
	}
	c.Next()
}

// RequestID returns the id of the request: the caller's X-Request-Id when it
// sent a sane one, else a fresh one.
func RequestID(c *gin.Context) string { return c.GetString(requestIDKey) }

func requestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		id := c.GetHeader(RequestIDHeader)
		if id == "" || len(id) > 64 {
			var b [12]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		c.Set(requestIDKey, id)
		c.Header(RequestIDHeader, id)
		c.Next()
	}
}

// accessLog writes one line per request, never with headers or bodies (they
// hold keys and tokens).
func accessLog(cfg Config) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		elapsed := time.Since(start)
		route := c.FullPath()
		if route == "" {
			route = "unmatched"
		}
		status := c.Writer.Status()
		if cfg.Metrics != nil {
			cfg.Metrics.observe(cfg.API, route, status, elapsed)
		}
		level := slog.LevelInfo
		if status >= 500 {
			level = slog.LevelError
		}
		attrs := append([]any{"api", cfg.API, "method", c.Request.Method, "route", route, "status", status,
			"duration_ms", float64(elapsed.Microseconds()) / 1000}, logAttrsOf(c)...)
		if tenant, ok := c.Get(TenantLogKey); ok {
			attrs = append(attrs, "tenant", tenant)
		}
		cfg.Logger.Log(c.Request.Context(), level, "request", attrs...)
	}
}

// TenantLogKey is the gin context key under which the tenant API puts the
// tenant's slug, so the access log names it.
const TenantLogKey = "tenantplane.tenant"

func recovery(logger *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				logger.ErrorContext(c.Request.Context(), "panic in handler", "panic", r, "route", c.FullPath(), "request_id", RequestID(c))
				Fail(c, catalog.CodeInternal, "internal error")
			}
		}()
		c.Next()
	}
}

func maxBody(n int64) gin.HandlerFunc {
	return func(c *gin.Context) {
		if c.Request.ContentLength > n {
			Fail(c, catalog.CodeTooLarge, "request body is larger than %d bytes", n)
			return
		}
		c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, n)
		c.Next()
	}
}

// Metrics counts requests per API, route and status, and their durations.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the request metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantplane_http_requests_total",
			Help: "HTTP requests answered, by API, route and status.",
		}, []string{"api", "route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tenantplane_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by API and route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"api", "route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *Metrics) observe(api, route string, status int, d time.Duration) {
	m.requests.WithLabelValues(api, route, http.StatusText(status)).Inc()
	m.duration.WithLabelValues(api, route).Observe(d.Seconds())
}

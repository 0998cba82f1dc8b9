package controlplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
)

// Config is tenantplane's configuration. ConfigFromEnv reads it from the
// environment; each field names its variable and default. As in every
// tenantplane Config, a setting that can be turned off is off when negative
// (its variable says off); components take a zero field as their default.
type Config struct {
	// DatabaseURL is the catalog database (DATABASE_URL). Required.
	DatabaseURL string
	// APIAddr is where the tenant API listens (TENANTPLANE_API_ADDR). Default ":8080".
	APIAddr string
	// AdminAddr is where the admin API listens (TENANTPLANE_ADMIN_ADDR). Default "127.0.0.1:8081".
	AdminAddr string
	// AdminToken is the admin API's bearer token (TENANTPLANE_ADMIN_TOKEN). Required, at least 16 characters.
	AdminToken string
	// SecretKey encrypts credentials at rest (TENANTPLANE_SECRET_KEY): 32 bytes as
	// base64 or 64 hex digits. Required.
	SecretKey []byte
	// StripeAPIKey enables invoicing through Stripe (STRIPE_API_KEY). Optional.
	StripeAPIKey string
	// StripeAPIBase points the Stripe client elsewhere, e.g. at stripe-mock (STRIPE_API_BASE). Optional.
	StripeAPIBase string
	// StripeTax is "automatic" to have Stripe compute every invoice's tax
	// from the tenant's billing address (TENANTPLANE_STRIPE_TAX). Default
	// "off". Needs STRIPE_API_KEY.
	StripeTax string
	// StripeTimeout bounds one attempt of one Stripe request
	// (TENANTPLANE_STRIPE_TIMEOUT). Default 10s. A request is tried twice, so
	// a Stripe that hangs fails a tenant's customer step after
	// billing.StripeCallLimit of it (25s by default), which must be under
	// CreateWait.
	StripeTimeout time.Duration
	// CreateWait is the longest POST /admin/v1/tenants?wait=true waits for
	// the tenant to settle (TENANTPLANE_CREATE_WAIT). Default 50s, at most 55s
	// (under the admin server's 60s write timeout).
	CreateWait time.Duration
	// StripeWebhookSecret checks Stripe webhook signatures (STRIPE_WEBHOOK_SECRET). Optional.
	StripeWebhookSecret string
	// TenantMigrations is a directory of tenant migrations that replaces the
	// embedded set (TENANTPLANE_TENANT_MIGRATIONS). Optional.
	TenantMigrations string
	// DeleteGrace is how long a deleted tenant can be restored before its
	// database is dropped (TENANTPLANE_DELETE_GRACE). Default 7 days (168h);
	// negative (off, or 0s): no grace, dropped at once.
	DeleteGrace time.Duration
	// ArchiveDir keeps a pg_dump of each tenant database before it is dropped
	// (TENANTPLANE_ARCHIVE_DIR). Optional.
	ArchiveDir string
	// BackupDir keeps the tenants' scheduled and requested backups
	// (TENANTPLANE_BACKUP_DIR). Optional: without it no backup is taken.
	BackupDir string
	// ExportDir keeps the tenants' exports (TENANTPLANE_EXPORT_DIR).
	// Default: BackupDir/exports; with neither, exports are refused.
	ExportDir string
	// ExportTTL is how long a finished export can be downloaded before it is
	// deleted (TENANTPLANE_EXPORT_TTL). Default 7 days (168h).
	ExportTTL time.Duration
	// BackupCheck is how often the backup schedule looks for due backups and
	// for expired backups and exports (TENANTPLANE_BACKUP_CHECK). Default
	// 30s; negative ("off"): backups only on request, nothing expires.
	BackupCheck time.Duration
	// WarmPoolSize is how many ready databases each server keeps for instant
	// tenant creation (TENANTPLANE_WARM_POOL_SIZE). Default 2; negative
	// (off, or 0): no warm pool.
	WarmPoolSize int
	// TenantConnLimit is each tenant role's CONNECTION LIMIT on its server
	// (TENANTPLANE_TENANT_CONN_LIMIT). Every replica may hold up to the
	// tenant plan's max_conns, so it must be at least Replicas x the largest
	// plan's max_conns. Default 40: four replicas of the enterprise plan (10).
	TenantConnLimit int
	// Replicas is how many tenantplane processes serve the tenant API on this
	// catalog (TENANTPLANE_REPLICAS). Each takes its share of every server's
	// connection budget, conn_budget / Replicas, so together they stay within
	// it; and a start refuses a TenantConnLimit below Replicas x a plan's
	// max_conns. Default 1.
	Replicas int
	// MoveHold bounds how long the tenant API holds a request of a tenant
	// whose move has its fence up before answering 503 with Retry-After
	// (TENANTPLANE_MOVE_HOLD). Default 5s.
	MoveHold time.Duration
	// MoveKeep is how long a moved tenant's source database is kept, fenced,
	// so that the move can be reverted (TENANTPLANE_MOVE_KEEP). Default 24h.
	MoveKeep time.Duration
	// MoveWorkers is how many moves this process runs at once
	// (TENANTPLANE_MOVE_WORKERS), whatever an evacuation's concurrency.
	// Default 2.
	MoveWorkers int
	// PoolCacheSize bounds the tenant pools open at once (TENANTPLANE_POOL_CACHE_SIZE). Default 500.
	PoolCacheSize int
	// UsageFlushInterval is how often the router writes its usage counters to
	// the catalog; a crash loses at most this much metering
	// (TENANTPLANE_USAGE_FLUSH_INTERVAL). Default 5s.
	UsageFlushInterval time.Duration
	// ShutdownTimeout bounds graceful shutdown (TENANTPLANE_SHUTDOWN_TIMEOUT). Default 30s.
	ShutdownTimeout time.Duration
	// BillingGrace is how long after a period ends its billing run starts by
	// itself, for late usage to arrive (TENANTPLANE_BILLING_GRACE). Default
	// 24h; negative ("off"): runs start only through the admin API.
	BillingGrace time.Duration
	// DunningGrace is how long a sent invoice may stay unpaid before its
	// tenant is suspended (TENANTPLANE_DUNNING_GRACE). Default 14 days
	// (336h); negative ("off"): never.
	DunningGrace time.Duration
	// StorageInterval is how often each tenant database's size is sampled
	// for billing (TENANTPLANE_STORAGE_INTERVAL). Default 1h; negative ("off"): never.
	StorageInterval time.Duration
	// TrustedProxies are the proxies in front of the tenant API whose
	// X-Forwarded-For is believed for tenants' IP allowlists
	// (TENANTPLANE_TRUSTED_PROXIES, CIDRs or addresses separated by commas).
	// Default none: the client is the socket's peer.
	TrustedProxies []netip.Prefix
	// TenantDomain serves each tenant at <slug>.<TenantDomain>
	// (TENANTPLANE_TENANT_DOMAIN, e.g. api.example.com), where only its own
	// keys are accepted. Default none: tenants are told apart by key alone.
	TenantDomain string
}

const minAdminTokenLen = 16

// domainRE is a DNS name of at least two labels.
var domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// off is a setting turned off, in Config and in the components' Configs.
const off = -1

// maxCreateWait keeps ?wait=true under the admin server's write timeout.
const maxCreateWait = 55 * time.Second

// stripeRetries is how often a Stripe request is retried (so tried twice).
const stripeRetries = 1

// customerTimeout bounds provisioning's Stripe customer step: every attempt
// of its one request times out, with the backoff between them.
func (c Config) customerTimeout() time.Duration {
	return billing.StripeCallLimit(c.StripeTimeout, stripeRetries)
}

// ConfigFromEnv reads the configuration through getenv (os.Getenv in
// production). It reports every missing or malformed setting at once, each
// naming its variable and what to set.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		DatabaseURL:         strings.TrimSpace(getenv("DATABASE_URL")),
		APIAddr:             orDefault(getenv("TENANTPLANE_API_ADDR"), ":8080"),
		AdminAddr:           orDefault(getenv("TENANTPLANE_ADMIN_ADDR"), "127.0.0.1:8081"),
		AdminToken:          getenv("TENANTPLANE_ADMIN_TOKEN"),
		StripeAPIKey:        getenv("STRIPE_API_KEY"),
		StripeAPIBase:       getenv("STRIPE_API_BASE"),
		StripeWebhookSecret: getenv("STRIPE_WEBHOOK_SECRET"),
		TenantMigrations:    getenv("TENANTPLANE_TENANT_MIGRATIONS"),
		ArchiveDir:          getenv("TENANTPLANE_ARCHIVE_DIR"),
		BackupDir:           strings.TrimSpace(getenv("TENANTPLANE_BACKUP_DIR")),
		ExportDir:           strings.TrimSpace(getenv("TENANTPLANE_EXPORT_DIR")),
	}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if cfg.DatabaseURL == "" {
		bad("DATABASE_URL", "not set; set it to the catalog database, e.g. postgres://user:pass@host:5432/tenantplane (or run `tenantplane dev` for a private one)")
	} else if _, err := catalog.RedactDSN(cfg.DatabaseURL); err != nil {
		bad("DATABASE_URL", "not a valid PostgreSQL connection string")
	}
	if cfg.AdminToken == "" {
		bad("TENANTPLANE_ADMIN_TOKEN", "not set; set it to a random string of at least %d characters (openssl rand -hex 32)", minAdminTokenLen)
	} else if len(cfg.AdminToken) < minAdminTokenLen {
		bad("TENANTPLANE_ADMIN_TOKEN", "too short; use at least %d characters (openssl rand -hex 32)", minAdminTokenLen)
	}
	if raw := getenv("TENANTPLANE_SECRET_KEY"); raw == "" {
		bad("TENANTPLANE_SECRET_KEY", "not set; set it to 32 random bytes in base64 (openssl rand -base64 32)")
	} else if key, err := catalog.ParseKey(raw); err != nil {
		bad("TENANTPLANE_SECRET_KEY", "%v", err)
	} else {
		cfg.SecretKey = key
	}
	if cfg.TenantMigrations != "" {
		if st, err := os.Stat(cfg.TenantMigrations); err != nil || !st.IsDir() {
			bad("TENANTPLANE_TENANT_MIGRATIONS", "%q is not a readable directory", cfg.TenantMigrations)
		}
	}
	switch cfg.StripeTax = strings.TrimSpace(getenv("TENANTPLANE_STRIPE_TAX")); cfg.StripeTax {
	case "", "off":
		cfg.StripeTax = "off"
	case "automatic":
		if cfg.StripeAPIKey == "" {
			bad("TENANTPLANE_STRIPE_TAX", "automatic needs STRIPE_API_KEY: Stripe computes the tax")
		}
	default:
		bad("TENANTPLANE_STRIPE_TAX", "%q is neither automatic nor off", cfg.StripeTax)
	}
	if cfg.StripeAPIBase != "" && cfg.StripeAPIKey == "" {
		bad("STRIPE_API_KEY", "not set, but STRIPE_API_BASE is; set both, or neither to bill without Stripe")
	}
	// Off is spelled off; 0s and 0, which meant off before it, still do.
	cfg.DeleteGrace = 7 * 24 * time.Hour
	switch raw := strings.TrimSpace(getenv("TENANTPLANE_DELETE_GRACE")); raw {
	case "":
	case "off":
		cfg.DeleteGrace = off
	default:
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			bad("TENANTPLANE_DELETE_GRACE", "%q is not a duration such as 168h, nor off (0s is off too)", raw)
		}
		cfg.DeleteGrace = d
		if d == 0 {
			cfg.DeleteGrace = off
		}
	}
	cfg.WarmPoolSize = 2
	switch raw := strings.TrimSpace(getenv("TENANTPLANE_WARM_POOL_SIZE")); raw {
	case "":
	case "off":
		cfg.WarmPoolSize = off
	default:
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || n > 100 {
			bad("TENANTPLANE_WARM_POOL_SIZE", "%q is not a whole number from 0 to 100, nor off (0 is off too)", raw)
		}
		cfg.WarmPoolSize = n
		if n == 0 {
			cfg.WarmPoolSize = off
		}
	}
	cfg.TenantConnLimit = 40
	if raw := getenv("TENANTPLANE_TENANT_CONN_LIMIT"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 10000 {
			bad("TENANTPLANE_TENANT_CONN_LIMIT", "%q is not a whole number from 1 to 10000", raw)
		}
		cfg.TenantConnLimit = n
	}
	cfg.Replicas = 1
	if raw := getenv("TENANTPLANE_REPLICAS"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 1000 {
			bad("TENANTPLANE_REPLICAS", "%q is not a whole number from 1 to 1000", raw)
		}
		cfg.Replicas = n
	}
	cfg.PoolCacheSize = 500
	if raw := getenv("TENANTPLANE_POOL_CACHE_SIZE"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			bad("TENANTPLANE_POOL_CACHE_SIZE", "%q is not a whole number of at least 1", raw)
		}
		cfg.PoolCacheSize = n
	}
	cfg.UsageFlushInterval = 5 * time.Second
	if raw := getenv("TENANTPLANE_USAGE_FLUSH_INTERVAL"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 100*time.Millisecond {
			bad("TENANTPLANE_USAGE_FLUSH_INTERVAL", "%q is not a duration of at least 100ms, such as 5s", raw)
		}
		cfg.UsageFlushInterval = d
	}
	cfg.MoveHold = 5 * time.Second
	if raw := getenv("TENANTPLANE_MOVE_HOLD"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 100*time.Millisecond || d > 30*time.Second {
			bad("TENANTPLANE_MOVE_HOLD", "%q is not a duration from 100ms to 30s, such as 5s", raw)
		}
		cfg.MoveHold = d
	}
	cfg.MoveKeep = 24 * time.Hour
	if raw := getenv("TENANTPLANE_MOVE_KEEP"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			bad("TENANTPLANE_MOVE_KEEP", "%q is not a duration such as 24h (0s: drop the source at once)", raw)
		}
		cfg.MoveKeep = d
	}
	cfg.MoveWorkers = 2
	if raw := getenv("TENANTPLANE_MOVE_WORKERS"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 64 {
			bad("TENANTPLANE_MOVE_WORKERS", "%q is not a whole number from 1 to 64", raw)
		}
		cfg.MoveWorkers = n
	}
	cfg.ShutdownTimeout = 30 * time.Second
	if raw := getenv("TENANTPLANE_SHUTDOWN_TIMEOUT"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d <= 0 {
			bad("TENANTPLANE_SHUTDOWN_TIMEOUT", "%q is not a positive duration such as 30s", raw)
		}
		cfg.ShutdownTimeout = d
	}
	cfg.StripeTimeout = 10 * time.Second
	if raw := getenv("TENANTPLANE_STRIPE_TIMEOUT"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 100*time.Millisecond {
			bad("TENANTPLANE_STRIPE_TIMEOUT", "%q is not a duration of at least 100ms, such as 10s", raw)
		}
		cfg.StripeTimeout = d
	}
	cfg.CreateWait = 50 * time.Second
	if raw := getenv("TENANTPLANE_CREATE_WAIT"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < time.Second || d > maxCreateWait {
			bad("TENANTPLANE_CREATE_WAIT", "%q is not a duration from 1s to %s, such as 50s", raw, maxCreateWait)
		}
		cfg.CreateWait = d
	}
	if limit := cfg.customerTimeout(); cfg.StripeAPIKey != "" && limit >= cfg.CreateWait {
		bad("TENANTPLANE_STRIPE_TIMEOUT", "%s lets a Stripe that hangs hold a tenant's creation for %s, not under TENANTPLANE_CREATE_WAIT (%s): lower it, or raise TENANTPLANE_CREATE_WAIT",
			cfg.StripeTimeout, limit, cfg.CreateWait)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
		min  time.Duration
	}{
		{"TENANTPLANE_BILLING_GRACE", &cfg.BillingGrace, 24 * time.Hour, time.Second},
		{"TENANTPLANE_DUNNING_GRACE", &cfg.DunningGrace, 14 * 24 * time.Hour, time.Second},
		{"TENANTPLANE_STORAGE_INTERVAL", &cfg.StorageInterval, time.Hour, time.Minute},
		{"TENANTPLANE_EXPORT_TTL", &cfg.ExportTTL, 7 * 24 * time.Hour, time.Minute},
		{"TENANTPLANE_BACKUP_CHECK", &cfg.BackupCheck, 30 * time.Second, time.Second},
	} {
		*d.v = d.def
		switch raw := strings.TrimSpace(getenv(d.name)); raw {
		case "":
		case "off":
			*d.v = off
		default:
			v, err := time.ParseDuration(raw)
			if err != nil || v < d.min {
				bad(d.name, "%q is not a duration of at least %s, such as %s, nor off", raw, d.min, d.def)
			}
			*d.v = v
		}
	}
	if raw := strings.TrimSpace(getenv("TENANTPLANE_TRUSTED_PROXIES")); raw != "" {
		proxies, err := catalog.ParsePrefixes("TENANTPLANE_TRUSTED_PROXIES", strings.Split(raw, ","))
		if err != nil {
			bad("TENANTPLANE_TRUSTED_PROXIES", "%s (a comma-separated list such as 10.0.0.0/8,192.0.2.7)", catalog.MessageOf(err))
		}
		cfg.TrustedProxies = proxies
	}
	if raw := strings.TrimSpace(getenv("TENANTPLANE_TENANT_DOMAIN")); raw != "" {
		domain := strings.TrimSuffix(strings.ToLower(raw), ".")
		if !domainRE.MatchString(domain) {
			bad("TENANTPLANE_TENANT_DOMAIN", "%q is not a domain name such as api.example.com (no scheme, port or path)", raw)
		}
		cfg.TenantDomain = domain
	}
	for _, d := range []struct{ name, dir string }{{"TENANTPLANE_BACKUP_DIR", cfg.BackupDir}, {"TENANTPLANE_EXPORT_DIR", cfg.ExportDir}} {
		if d.dir != "" && !filepath.IsAbs(d.dir) {
			bad(d.name, "%q is not an absolute path", d.dir)
		}
	}
	if cfg.ExportTTL == off {
		bad("TENANTPLANE_EXPORT_TTL", "cannot be off: an export is deleted after it (e.g. 168h)")
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("configuration: %w", errors.Join(errs...))
	}
	return cfg, nil
}

func orDefault(v, def string) string {
	if v = strings.TrimSpace(v); v == "" {
		return def
	}
	return v
}

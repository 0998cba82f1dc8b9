package controlplane

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"DATABASE_URL":            "postgres://u:p@localhost:5432/tenantplane",
		"TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	cfg, err := ConfigFromEnv(envOf(good))
	require.NoError(t, err)
	require.Equal(t, ":8080", cfg.APIAddr)
	require.Equal(t, "127.0.0.1:8081", cfg.AdminAddr, "the admin API listens on loopback by default")
	require.Len(t, cfg.SecretKey, 32)
	require.Equal(t, 30*time.Second, cfg.ShutdownTimeout)
	require.Equal(t, 40, cfg.TenantConnLimit)
	require.Equal(t, 2, cfg.MoveWorkers)

	// Every problem is reported at once, each naming its variable.
	_, err = ConfigFromEnv(envOf(map[string]string{}))
	require.Error(t, err)
	for _, name := range []string{"DATABASE_URL", "TENANTPLANE_ADMIN_TOKEN", "TENANTPLANE_SECRET_KEY"} {
		require.Contains(t, err.Error(), name+": not set")
	}

	cases := map[string]string{
		"DATABASE_URL":                  "postgres://%zz",
		"TENANTPLANE_ADMIN_TOKEN":       "short",
		"TENANTPLANE_SECRET_KEY":        "not-a-key",
		"TENANTPLANE_TENANT_MIGRATIONS": "/does/not/exist",
		"TENANTPLANE_SHUTDOWN_TIMEOUT":  "soon",
		"TENANTPLANE_TENANT_CONN_LIMIT": "0",
		"TENANTPLANE_REPLICAS":          "0",
		"STRIPE_API_BASE":               "http://127.0.0.1:12111",
		"TENANTPLANE_STRIPE_TIMEOUT":    "0s",
		"TENANTPLANE_CREATE_WAIT":       "2m",
		"TENANTPLANE_MOVE_WORKERS":      "0",
	}
	for name, value := range cases {
		env := map[string]string{}
		for k, v := range good {
			env[k] = v
		}
		env[name] = value
		_, err := ConfigFromEnv(envOf(env))
		require.Error(t, err, name)
		if name != "STRIPE_API_BASE" {
			require.Contains(t, err.Error(), name+":", name)
		}
		if name == "STRIPE_API_BASE" {
			require.Contains(t, err.Error(), "STRIPE_API_KEY: not set")
		}
	}
}

// A Stripe timeout that would let a hung Stripe outlast ?wait=true is refused.
func TestConfigStripeTimeoutFitsTheCreateWait(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL": "postgres://u:p@localhost/db", "TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "STRIPE_API_KEY": "sk_test_x",
		"TENANTPLANE_STRIPE_TIMEOUT": "25s",
	}
	_, err := ConfigFromEnv(envOf(env))
	require.ErrorContains(t, err, "TENANTPLANE_STRIPE_TIMEOUT: 25s lets a Stripe that hangs hold a tenant's creation for 55s, not under TENANTPLANE_CREATE_WAIT (50s)")
	env["TENANTPLANE_STRIPE_TIMEOUT"] = "10s"
	cfg, err := ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	require.Equal(t, 25*time.Second, cfg.customerTimeout())
	require.Equal(t, 50*time.Second, cfg.CreateWait)
}

// Off is spelled off in every variable that can be off, and is negative in
// Config; the older spellings (0 for the warm pool, 0s for the delete
// grace) still mean off.
func TestConfigOffSpellings(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"DATABASE_URL":            "postgres://u:p@localhost:5432/tenantplane",
		"TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	with := func(k, v string) func(string) string {
		env := map[string]string{k: v}
		for k, v := range good {
			env[k] = v
		}
		return envOf(env)
	}
	cfg, err := ConfigFromEnv(envOf(good))
	require.NoError(t, err)
	require.Equal(t, 2, cfg.WarmPoolSize)
	require.Equal(t, 7*24*time.Hour, cfg.DeleteGrace)

	for _, v := range []string{"off", "0"} {
		cfg, err := ConfigFromEnv(with("TENANTPLANE_WARM_POOL_SIZE", v))
		require.NoError(t, err, v)
		require.Negative(t, cfg.WarmPoolSize, v)
	}
	for _, v := range []string{"off", "0s", "0"} {
		cfg, err := ConfigFromEnv(with("TENANTPLANE_DELETE_GRACE", v))
		require.NoError(t, err, v)
		require.Negative(t, cfg.DeleteGrace, v)
	}
	cfg, err = ConfigFromEnv(with("TENANTPLANE_WARM_POOL_SIZE", "5"))
	require.NoError(t, err)
	require.Equal(t, 5, cfg.WarmPoolSize)
	cfg, err = ConfigFromEnv(with("TENANTPLANE_DELETE_GRACE", "2s"))
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, cfg.DeleteGrace)
	for name, bad := range map[string]string{"TENANTPLANE_WARM_POOL_SIZE": "-1", "TENANTPLANE_DELETE_GRACE": "-1h"} {
		_, err := ConfigFromEnv(with(name, bad))
		require.ErrorContains(t, err, name+":")
		require.ErrorContains(t, err, "nor off")
	}
}

func TestConfigTrustedProxies(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL":            "postgres://u:p@localhost:5432/tenantplane",
		"TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	cfg, err := ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	require.Empty(t, cfg.TrustedProxies, "no proxy is trusted by default")

	env["TENANTPLANE_TRUSTED_PROXIES"] = "10.0.0.0/8, 192.0.2.7,2001:db8::/32"
	cfg, err = ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32")}, cfg.TrustedProxies)

	for _, bad := range []string{"10.0.0.1/8", "proxy.internal", "10.0.0.0/8,,"} {
		env["TENANTPLANE_TRUSTED_PROXIES"] = bad
		_, err = ConfigFromEnv(envOf(env))
		require.ErrorContains(t, err, "TENANTPLANE_TRUSTED_PROXIES:", bad)
	}
}

func TestConfigTenantDomain(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL":            "postgres://u:p@localhost:5432/tenantplane",
		"TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	cfg, err := ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	require.Empty(t, cfg.TenantDomain)
	env["TENANTPLANE_TENANT_DOMAIN"] = "API.example.com."
	cfg, err = ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	require.Equal(t, "api.example.com", cfg.TenantDomain)
	for _, bad := range []string{"https://api.example.com", "api.example.com:8080", "localhost", "api..example.com", "*.example.com"} {
		env["TENANTPLANE_TENANT_DOMAIN"] = bad
		_, err = ConfigFromEnv(envOf(env))
		require.ErrorContains(t, err, "TENANTPLANE_TENANT_DOMAIN:", bad)
	}
}

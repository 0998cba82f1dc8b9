package controlplane

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestTenantServerTLS: a tenant server that speaks only TLS, registered
// with sslmode=verify-full and the CA that signed its certificate, works
// end to end (registration, provisioning, migrations, the tenant API, the
// drift report); one whose certificate names another host, or that a
// different CA signed, is refused at registration with an error that says
// so, and nothing is stored.
func TestTenantServerTLS(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	srv, ca := pgtest.NewTLSServer(t)
	f := &fleet{testBundle: b, servers: map[string]*pgtest.Server{"pg-tls": srv}}
	status, body := call(t, "POST", b.admin+"/admin/v1/servers", testToken,
		map[string]any{"name": "pg-tls", "dsn": srv.TLSManagedDSN(t, "postgres", ca), "capacity": 10})
	require.Equal(t, http.StatusCreated, status, body)

	_, key := f.tenantWithKey(t, "over-tls", "pro", "pg-tls")
	status, body = call(t, "POST", b.api+"/v1/users", key, map[string]any{"email": "tls@example.com", "name": "t"})
	require.Equal(t, http.StatusCreated, status, body)
	status, body = call(t, "GET", b.api+"/v1/users", key, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["users"], 1)
	status, body = call(t, "GET", b.admin+"/admin/v1/migrations/status", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Empty(t, body["dirty"], "the drift report read the tenant database over TLS")
	// The server refuses TCP without TLS (pgtest.NewTLSServer): every
	// connection above was encrypted; the router's one is still open.
	require.Positive(t, query[int64](t, srv.TLSDSN("postgres", ca),
		`SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tenantplane-router' AND s.ssl`))

	otherHost, otherCA := pgtest.NewTLSServer(t, "db.other.test")
	for _, tc := range []struct{ name, dsn, want string }{
		{"a certificate for another host", otherHost.TLSManagedDSN(t, "postgres", otherCA), "certificate is not valid for host 127.0.0.1 (it names db.other.test)"},
		{"a certificate of another CA", srv.TLSManagedDSN(t, "postgres", otherCA), "not signed by the CA in sslrootcert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(t, "POST", b.admin+"/admin/v1/servers", testToken, map[string]any{"name": "pg-bad", "dsn": tc.dsn})
			require.Equal(t, http.StatusBadRequest, status, body)
			require.Equal(t, "invalid", errorCode(t, body))
			t.Logf("%s: %s", tc.name, body["error"].(map[string]any)["message"])
			require.Contains(t, body["error"].(map[string]any)["message"], tc.want)
		})
	}
	status, body = call(t, "GET", b.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Len(t, body["servers"], 1, "nothing of the refused registrations was stored")
}

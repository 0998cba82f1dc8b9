package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	// The catalog lives on a cluster of this test's own, so it can be stopped.
	pg := pgtest.NewServer(t)
	b := setup(t, pg.NewDB(t))

	for _, base := range []string{b.api, b.admin} {
		status, body := call(t, "GET", base+"/healthz", "", nil)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "ok", body["status"])
		status, body = call(t, "GET", base+"/readyz", "", nil)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "ready", body["status"])
	}

	pg.Stop(t)
	start := time.Now()
	status, body := call(t, "GET", b.admin+"/readyz", "", nil)
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "unavailable", errorCode(t, body))
	require.Less(t, time.Since(start), 3*time.Second, "readyz must answer fast while the catalog is down")
	status, _ = call(t, "GET", b.api+"/healthz", "", nil)
	require.Equal(t, http.StatusOK, status, "the process is alive even when the catalog is not")
	status, body = call(t, "GET", b.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "unavailable", errorCode(t, body))

	pg.Start(t)
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", b.admin+"/readyz", "", nil)
		return status == http.StatusOK
	}, 10*time.Second, 100*time.Millisecond)
}

func TestAdminRequiresToken(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	for _, token := range []string{"", "wrong-token-0123456789", testToken + "x"} {
		status, body := call(t, "GET", b.admin+"/admin/v1/servers", token, nil)
		require.Equal(t, http.StatusUnauthorized, status, "token %q", token)
		require.Equal(t, "unauthorized", errorCode(t, body))
	}
	status, _ := call(t, "GET", b.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status)

	// The metrics endpoint serves Prometheus text and counts the requests above.
	resp, err := http.Get(b.admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, string(raw), `tenantplane_http_requests_total{api="admin",route="/admin/v1/servers",status="Unauthorized"} 3`)
}

func TestRegisterServer(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	shared := pgtest.Shared(t)
	superDSN := shared.DSN("postgres")
	// A non-superuser admin role, as the README asks operators for, with a
	// password that cannot appear in an answer by chance.
	password := "pw-" + randomHex(12)
	admin := createRole(t, superDSN, "LOGIN CREATEDB CREATEROLE PASSWORD '"+password+"'")
	good := withUser(t, superDSN, admin, password)

	status, body := call(t, "POST", b.admin+"/admin/v1/servers", testToken, map[string]any{"name": "pg-1", "dsn": good, "capacity": 50})
	require.Equal(t, http.StatusCreated, status, body)
	require.Equal(t, "pg-1", body["name"])
	require.EqualValues(t, 50, body["capacity"])
	require.Equal(t, "active", body["state"])
	require.NotContains(t, body["dsn"], password)
	require.Contains(t, body["dsn"], fmt.Sprintf("127.0.0.1:%d", shared.Port()))

	t.Run("duplicate name", func(t *testing.T) {
		status, body := call(t, "POST", b.admin+"/admin/v1/servers", testToken, map[string]any{"name": "pg-1", "dsn": good})
		require.Equal(t, http.StatusConflict, status)
		require.Equal(t, "conflict", errorCode(t, body))
	})

	// A role without CREATEDB/CREATEROLE is refused with the fix in the message.
	weak := createRole(t, superDSN, "LOGIN PASSWORD 'weakpw'")
	weakDSN := withUser(t, superDSN, weak, "weakpw")

	bad := []struct {
		name, dsn, want string
	}{
		{"wrong password", strings.Replace(good, ":"+password+"@", ":not-the-password@", 1), "authentication failed"},
		{"nothing listening", "postgres://postgres:pw@127.0.0.1:1/postgres?sslmode=disable", "connection refused"},
		{"malformed", "postgres://%zz", "not a valid PostgreSQL connection string"},
		{"missing privileges", weakDSN, "needs CREATEDB and CREATEROLE"},
		{"empty", "", "dsn is required"},
	}
	for i, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("bad-%d", i)
			status, body := call(t, "POST", b.admin+"/admin/v1/servers", testToken, map[string]any{"name": name, "dsn": tc.dsn})
			require.Equal(t, http.StatusBadRequest, status, body)
			require.Equal(t, "invalid", errorCode(t, body))
			msg := body["error"].(map[string]any)["message"].(string)
			require.Contains(t, msg, tc.want)
			require.NotContains(t, msg, "not-the-password")
			require.NotContains(t, msg, "weakpw")
		})
	}
	for _, body := range []any{map[string]any{"name": "Bad Name", "dsn": good}, map[string]any{"name": "neg", "dsn": good, "capacity": -1}, "not an object"} {
		status, resp := call(t, "POST", b.admin+"/admin/v1/servers", testToken, body)
		require.Equal(t, http.StatusBadRequest, status, resp)
	}

	// Nothing of the failed calls was stored.
	status, body = call(t, "GET", b.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	servers := body["servers"].([]any)
	require.Len(t, servers, 1)
	require.Equal(t, "pg-1", servers[0].(map[string]any)["name"])

	// No log line holds a password.
	require.NotContains(t, b.logs.String(), password)
	require.NotContains(t, b.logs.String(), "not-the-password")
	require.NotContains(t, b.logs.String(), "weakpw")
}

func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, "")

	// A request whose body is still arriving is in flight: Stop must wait for
	// it, and it must get its whole answer.
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", b.admin+"/admin/v1/servers", pr)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testToken)
	type result struct {
		status int
		body   string
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- result{err: err}
			return
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		answered <- result{status: resp.StatusCode, body: string(raw), err: err}
	}()
	_, err = pw.Write([]byte(`{"name": "late", `))
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // the handler is now reading the body

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- b.app.Stop(ctx)
	}()
	select {
	case <-stopped:
		t.Fatal("Stop returned while a request was in flight")
	case <-time.After(300 * time.Millisecond):
	}

	_, err = pw.Write([]byte(`"dsn": ""}`))
	require.NoError(t, err)
	require.NoError(t, pw.Close())
	res := <-answered
	require.NoError(t, res.err)
	require.Equal(t, http.StatusBadRequest, res.status)
	require.Contains(t, res.body, "dsn is required")
	require.NoError(t, <-stopped)

	// After Stop, nothing listens.
	_, err = http.Get(b.admin + "/healthz")
	require.Error(t, err)
}

// withUser returns dsn with another user and password.
func withUser(t testing.TB, dsn, user, password string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	u.User = url.UserPassword(user, password)
	return u.String()
}

// createRole creates a uniquely named role on the server of adminDSN and drops it at cleanup.
func createRole(t testing.TB, adminDSN, options string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, adminDSN)
	require.NoError(t, err)
	defer conn.Close(ctx)
	name := "role_" + randomHex(6)
	_, err = conn.Exec(ctx, "CREATE ROLE "+name+" "+options)
	require.NoError(t, err)
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, adminDSN)
		if err == nil {
			_, _ = conn.Exec(ctx, "DROP ROLE IF EXISTS "+name)
			conn.Close(ctx)
		}
	})
	return name
}

func TestStartRefusesAConnLimitBelowReplicasOfAPlansPool(t *testing.T) {
	t.Parallel()
	catalogDSN := pgtest.NewDB(t)
	for _, tc := range []struct{ limit, replicas, want string }{
		{"5", "", `TENANTPLANE_TENANT_CONN_LIMIT=5 is below TENANTPLANE_REPLICAS=1 x plan "enterprise"'s pool of 10 connections; set it to at least 10`},
		{"40", "5", `TENANTPLANE_TENANT_CONN_LIMIT=40 is below TENANTPLANE_REPLICAS=5 x plan "enterprise"'s pool of 10 connections; set it to at least 50`},
	} {
		cfg, err := ConfigFromEnv(envOf(map[string]string{
			"DATABASE_URL":                  catalogDSN,
			"TENANTPLANE_ADMIN_TOKEN":       testToken,
			"TENANTPLANE_SECRET_KEY":        catalog.NewKey(),
			"TENANTPLANE_TENANT_CONN_LIMIT": tc.limit, // enterprise pools hold 10
			"TENANTPLANE_REPLICAS":          tc.replicas,
		}))
		require.NoError(t, err)
		_, err = New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		require.ErrorContains(t, err, tc.want)
	}
}

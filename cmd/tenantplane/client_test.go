package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/controlplane"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const testToken = "test-admin-token-0123456789"

// testBundle is the real admin API, on port 0 over a catalog of its own.
type testBundle struct {
	adminURL string // http://host:port
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL":            pgtest.NewDB(t),
		"TENANTPLANE_API_ADDR":    "127.0.0.1:0",
		"TENANTPLANE_ADMIN_ADDR":  "127.0.0.1:0",
		"TENANTPLANE_ADMIN_TOKEN": testToken,
		"TENANTPLANE_SECRET_KEY":  catalog.NewKey(),
	}
	cfg, err := controlplane.ConfigFromEnv(func(k string) string { return env[k] })
	require.NoError(t, err)
	ctx := context.Background()
	app, err := controlplane.New(ctx, cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	require.NoError(t, err)
	require.NoError(t, app.Start(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, app.Stop(ctx))
	})
	return &testBundle{adminURL: "http://" + app.AdminAddr()}
}

// run runs the CLI in-process with the bundle's URL and token.
func (b *testBundle) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runCLI(t, "", append(args, "--admin-url", b.adminURL, "--token", testToken)...)
}

// runCLI runs the CLI in-process with stdin, as main would, minus the exit.
func runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// closedURL is an http URL on which nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "http://" + addr
}

// Sequential: it changes the environment.
func TestMissingTokenNamesTheVariable(t *testing.T) {
	t.Setenv(envAdminToken, "")
	t.Setenv(envAdminURL, "")
	for _, args := range [][]string{
		{"servers", "list"},
		{"servers", "add", "pg-1", "--dsn", "postgres://u@h/db"},
		{"tenants", "list"},
		{"tenants", "create", "acme", "--name", "Acme", "--plan", "pro"},
		{"keys", "list", "acme"},
	} {
		_, _, err := runCLI(t, "", args...)
		require.Error(t, err, args)
		require.Contains(t, err.Error(), "TENANTPLANE_ADMIN_TOKEN is not set", args)
	}
}

// Sequential: it changes the environment.
func TestConfigFromEnvironmentAndTokenNeverShown(t *testing.T) {
	b := setup(t)
	t.Setenv(envAdminURL, b.adminURL)
	t.Setenv(envAdminToken, testToken)

	stdout, _, err := runCLI(t, "", "servers", "list")
	require.NoError(t, err)
	require.Contains(t, stdout, "No servers registered")

	// --token wins over the variable; neither the right nor the wrong token is echoed.
	stdout, stderr, err := runCLI(t, "", "servers", "list", "--token", "wrong-token-0123456789")
	require.Error(t, err)
	require.Contains(t, err.Error(), "(unauthorized, HTTP 401)")
	for _, s := range []string{stdout, stderr, err.Error()} {
		require.NotContains(t, s, "wrong-token-0123456789")
		require.NotContains(t, s, testToken)
	}

	for _, args := range [][]string{{"servers", "--help"}, {"tenants", "create", "--help"}, {"keys", "list", "--help"}} {
		stdout, stderr, err := runCLI(t, "", args...)
		require.NoError(t, err)
		require.Contains(t, stdout, "--admin-url")
		require.NotContains(t, stdout+stderr, testToken)
	}
}

func TestUnreachableAdminAPI(t *testing.T) {
	t.Parallel()
	url := closedURL(t)
	for _, args := range [][]string{
		{"servers", "list"},
		{"servers", "drain", "pg-1"},
		{"tenants", "create", "acme", "--name", "Acme", "--plan", "pro", "--wait"},
		{"tenants", "list", "--all"},
		{"tenants", "suspend", "acme", "--reason", "unpaid"},
		{"tenants", "rotate-credentials", "acme"},
		{"keys", "create", "acme"},
		{"keys", "revoke", "acme", "7"},
	} {
		_, _, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken)...)
		require.Error(t, err, args)
		var unreachable *UnreachableError
		require.ErrorAs(t, err, &unreachable, args)
		require.Contains(t, err.Error(), "the admin API at "+url+" is unreachable", args)
		require.Contains(t, err.Error(), "check TENANTPLANE_ADMIN_URL", args)
		require.NotContains(t, err.Error(), testToken)
	}
}

func TestTimeoutBoundsEveryCall(t *testing.T) {
	t.Parallel()
	// A server that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	url := "http://" + ln.Addr().String()

	for _, args := range [][]string{
		{"servers", "list"},
		{"tenants", "create", "acme", "--name", "Acme", "--plan", "pro", "--wait"},
	} {
		start := time.Now()
		_, _, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken, "--timeout", "300ms")...)
		require.Error(t, err, args)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Contains(t, err.Error(), "the admin API at "+url+" did not answer within 300ms")
		require.Less(t, time.Since(start), 10*time.Second)
	}
}

func TestBadAdminURLAndTimeout(t *testing.T) {
	t.Parallel()
	_, _, err := runCLI(t, "", "servers", "list", "--admin-url", "127.0.0.1:8081", "--token", testToken)
	require.Error(t, err)
	require.Contains(t, err.Error(), "must be an http:// or https:// URL")
	require.Contains(t, err.Error(), "TENANTPLANE_ADMIN_URL")

	_, _, err = runCLI(t, "", "servers", "list", "--admin-url", closedURL(t), "--token", testToken, "--timeout", "0s")
	require.Error(t, err)
	require.Contains(t, err.Error(), "--timeout must be positive")
}

func TestClientConfigPrecedence(t *testing.T) {
	t.Parallel()
	env := map[string]string{envAdminURL: "http://10.0.0.1:8081/", envAdminToken: "from-env"}
	getenv := func(k string) string { return env[k] }

	c, err := (&adminOptions{timeout: time.Second}).client(getenv)
	require.NoError(t, err)
	require.Equal(t, "http://10.0.0.1:8081", c.BaseURL)
	require.Equal(t, "from-env", c.Token)
	require.Equal(t, time.Second, c.Timeout)

	c, err = (&adminOptions{url: "https://admin.example", token: "from-flag", timeout: time.Second}).client(getenv)
	require.NoError(t, err)
	require.Equal(t, "https://admin.example", c.BaseURL)
	require.Equal(t, "from-flag", c.Token)

	c, err = (&adminOptions{timeout: time.Second}).client(func(k string) string {
		if k == envAdminToken {
			return "t"
		}
		return ""
	})
	require.NoError(t, err)
	require.Equal(t, defaultAdminURL, c.BaseURL)
}

func TestAPIErrorOf(t *testing.T) {
	t.Parallel()
	resp := &http.Response{StatusCode: http.StatusConflict}
	e := apiErrorOf(resp, []byte(`{"error": {"code": "conflict", "message": "server \"pg-1\" already exists"}}`))
	require.Equal(t, &APIError{Status: 409, Code: "conflict", Message: `server "pg-1" already exists`}, e)
	require.Equal(t, `server "pg-1" already exists (conflict, HTTP 409)`, e.Error())

	// Not the API's shape: a proxy's answer still reads well.
	e = apiErrorOf(&http.Response{StatusCode: http.StatusBadGateway}, []byte("<html>upstream down</html>\n"))
	require.Equal(t, "Bad Gateway: <html>upstream down</html> (http_502, HTTP 502)", e.Error())
	e = apiErrorOf(&http.Response{StatusCode: http.StatusServiceUnavailable}, nil)
	require.Equal(t, "Service Unavailable (http_503, HTTP 503)", e.Error())
	var target *APIError
	require.True(t, errors.As(error(e), &target))
}

func TestPathfEscapesSegments(t *testing.T) {
	t.Parallel()
	require.Equal(t, "/tenants/a%2Fb/keys/1%3F", pathf("/tenants/%s/keys/%s", "a/b", "1?"))
}

func TestConnectionClosedWithoutAnswer(t *testing.T) {
	t.Parallel()
	// A server that accepts, reads the request and hangs up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Read(make([]byte, 4096))
			_ = conn.Close()
		}
	}()
	url := "http://" + ln.Addr().String()
	_, _, err = runCLI(t, "", "servers", "list", "--admin-url", url, "--token", testToken)
	require.Error(t, err)
	require.Contains(t, err.Error(), "the admin API at "+url+" closed the connection without a complete answer")
}

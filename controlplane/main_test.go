package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	// TestExportOf100MBKeepsMemoryFlat starts this binary again
	// (helperproc.Start) as a tenantplane process of its own, whose heap
	// no other test shares: the variable says so, and no test runs.
	if os.Getenv(appHelperEnv) != "" {
		helperproc.Run("app", runAppHelper)
	}
	pgtest.Main(m)
}

// appHelperEnv makes the test binary a tenantplane process configured by
// its environment, printing "admin=ADDR" then "api=ADDR" once it serves
// (TestExportOf100MBKeepsMemoryFlat, TestRandomKills).
const appHelperEnv = "TENANTPLANE_TEST_APP_HELPER"

func runAppHelper() error {
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	ctx := context.Background()
	app, err := New(ctx, cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	if err := app.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("admin=%s\napi=%s\n", app.AdminAddr(), app.APIAddr())
	select {} // until killed, or until the test is gone (helperproc)
}

const testToken = "test-admin-token-0123456789"

// testBundle is a running App on port 0 over a catalog of its own.
type testBundle struct {
	app   *App
	api   string      // http://host:port of the tenant API
	admin string      // http://host:port of the admin API
	logs  *syncWriter // everything the app logged
}

// setup starts the real App on catalogDSN (a fresh database on the shared
// test server when empty).
func setup(t testing.TB, catalogDSN string) *testBundle {
	t.Helper()
	return setupEnv(t, catalogDSN, nil)
}

// setupEnv is setup with extra environment variables.
func setupEnv(t testing.TB, catalogDSN string, extra map[string]string) *testBundle {
	t.Helper()
	return setupEnvLogs(t, catalogDSN, extra, &syncWriter{})
}

// setupEnvLogs is setupEnv with the app's logs going to logs.
func setupEnvLogs(t testing.TB, catalogDSN string, extra map[string]string, logs *syncWriter) *testBundle {
	t.Helper()
	if catalogDSN == "" {
		catalogDSN = pgtest.NewDB(t)
	}
	env := map[string]string{
		"DATABASE_URL":            catalogDSN,
		"TENANTPLANE_API_ADDR":    "127.0.0.1:0",
		"TENANTPLANE_ADMIN_ADDR":  "127.0.0.1:0",
		"TENANTPLANE_ADMIN_TOKEN": testToken,
		"TENANTPLANE_SECRET_KEY":  catalog.NewKey(),
	}
	for k, v := range extra {
		env[k] = v
	}
	cfg, err := ConfigFromEnv(envOf(env))
	require.NoError(t, err)
	ctx := context.Background()
	app, err := New(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	require.NoError(t, err)
	require.NoError(t, app.Start(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, app.Stop(ctx))
	})
	return &testBundle{app: app, api: "http://" + app.APIAddr(), admin: "http://" + app.AdminAddr(), logs: logs}
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// call sends a request with the admin token (when token is not "") and
// decodes the JSON answer.
func call(t testing.TB, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(raw, &out), string(raw))
	}
	return resp.StatusCode, out
}

// errorCode returns the code of an {"error": {...}} body.
func errorCode(t testing.TB, body map[string]any) string {
	t.Helper()
	e, ok := body["error"].(map[string]any)
	require.True(t, ok, "not an error body: %v", body)
	require.NotEmpty(t, e["message"])
	return e["code"].(string)
}

// syncWriter lets the app's logger write from many goroutines into one
// buffer (none with discard: a soak's logs would fill the heap).
type syncWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	discard bool
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.discard {
		return len(p), nil
	}
	return s.buf.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
